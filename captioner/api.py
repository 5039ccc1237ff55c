"""The Python API: caption images with a trained checkpoint.

    from captioner import Captioner
    captioner = Captioner.from_checkpoint("runs/shapes/checkpoints/best.ckpt")
    for result in captioner.caption(["a.jpg", "photos/"]):
        print(result.image, result.text if result.ok else result.error)

The same objects the CLI uses: `captioner caption` is a loop over `Captioner.stream`.
"""

from captioner.model.inference import Caption, Captioner, CaptionResult, Decoding

__all__ = ["Caption", "CaptionResult", "Captioner", "Decoding"]
