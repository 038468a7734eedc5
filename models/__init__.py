"""The networks and everything that handles whole models.

`common` (YOLOv5 blocks and the ShuffleNetV2 patch) and `yolo` (the detector) are the networks; `experimental`,
`checkpoint`, `pretrained` and `exporters` load, save, transfer and convert whole models built from them.
"""
