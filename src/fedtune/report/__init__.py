"""Human-readable summaries of runs: terminal tables now, HTML reports later."""
