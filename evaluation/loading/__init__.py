"""Loading what evaluation works on: exported backbones (torch or ONNX), cached features, label fractions, image
pools."""
