"""Calibrators, locked operating thresholds and conformal prediction sets, all fitted on validation data."""
