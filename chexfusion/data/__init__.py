"""Data layer: CXR-LT CSVs, views, studies, label policy, images, synthetic demo data."""
