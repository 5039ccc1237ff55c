"""Data: from files on disk to the batches training reads.

Owns image reading (images.py), caption tokenisation and the vocabulary, the COCO/Karpathy
readers (coco.py), the objects COCO instances files annotate (instances.py), what a config's
data settings resolve to (prepare.py), the built-in shapes generator, the COCO downloader, the
importer of other datasets (importing/), and the datasets and LightningDataModule. Imports only
captioner.config, captioner.errors and captioner.util.
"""
