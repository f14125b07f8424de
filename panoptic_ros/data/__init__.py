"""Data: panoptic formats (formats), synthetic street scenes (synthetic, synth_cli), dataset readers
(datasets, augment, torch_dataset) and rosbag2 I/O (rosbag_io)."""
