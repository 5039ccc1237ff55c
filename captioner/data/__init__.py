"""Data: tokenisation, vocabulary, COCO/Karpathy readers, the built-in shapes set, the DataModule."""
