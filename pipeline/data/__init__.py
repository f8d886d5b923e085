"""Data stages: real VOC-aug / Cityscapes fetch and conversion, generated datasets, validation."""
