"""Files in and out: reading images (reading, integrity), checking them (validation), writing a
study's results (outputs, files, overlay, dicom_seg)."""
