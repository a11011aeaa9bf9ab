"""Prediction tasks extracted from electronic health records (currently the MIMIC-IV demo)."""
