"""Model definitions: YOLOv5 blocks and the ShuffleNetV2 patch (`common`), the detector (`yolo`)."""
