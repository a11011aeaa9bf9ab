"""Clinical metrics with confidence intervals, decision curves, subgroups and dataset shift."""
