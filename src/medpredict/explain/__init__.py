"""Explanations: Grad-CAM and occlusion maps, and the checks that keep them honest."""
