"""Image data: manifests, patient-level splits, fingerprints, datasets, transforms, fetching and checks."""
