"""One image as a uint8 (C, H, W) array: torchvision's conversion and ``Resize(R)+CenterCrop(S)`` rules; or, for
images already normalised (floats outside [0, 1]), as a float32 (C, H, W) array whose values are kept.

The rules are documented once in :mod:`probe.data.images.cache`; this module applies them to one image, and
decides which floats are already normalised and which are clearly wrong (:func:`are_normalised`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ...errors import DataError, SettingsError

RESIZE_RULE = (
    "shorter side to R (default S) with PIL's antialiased filter (default bilinear, else the pretrained model's, "
    "e.g. bicubic), centre crop S×S: torchvision Resize(R, interpolation)+CenterCrop(S)"
)
DEFAULT_INTERPOLATION = "bilinear"
CONVERSION_RULE = (
    "colour via PIL convert('RGB') (alpha dropped, not composited); grey L/LA/1 kept grey (alpha dropped); "
    "16-bit scaled round(v/257); grey replicated to 3 channels when the data mixes grey and colour"
)
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


class BadImage(Exception):
    """An item that cannot be used (not an image, corrupt, too large); it is skipped by the bad-file rule."""


def resize_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """(new_width, new_height) of torchvision's ``Resize(size)``: shorter side to ``size``, the other truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def resampling(interpolation: str | None) -> Image.Resampling:
    """PIL's filter named ``interpolation`` (``bilinear``, ``bicubic``, ``nearest``, ``lanczos``, ``box``,
    ``hamming``; None: bilinear); a SettingsError for any other name."""
    name = (interpolation or DEFAULT_INTERPOLATION).lower()
    try:
        return Image.Resampling[name.upper()]
    except KeyError:
        known = ", ".join(f.name.lower() for f in Image.Resampling)
        raise SettingsError(f"interpolation={interpolation!r} is not a PIL filter; use one of {known}") from None


def to_uint8(
    image: Any,
    image_size: int | None = None,
    channels: int | None = None,
    max_pixels: int | None = None,
    resize: int | None = None,
    interpolation: str | None = None,
) -> np.ndarray:
    """One image (PIL, uint8/[0,1]-float tensor or array) as a uint8 (C, H, W) array, converted and resized
    by the rules in the module docstring: shorter side to ``resize`` (default ``image_size``) with the PIL
    filter ``interpolation`` (default bilinear), centre crop ``image_size``. ``channels`` None keeps grey grey
    and colour RGB.
    Raises :class:`BadImage` for a corrupt or too large image, :class:`DataError` for an unusable object."""
    img = as_pil(image)
    resample = resampling(interpolation)
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if limit is not None and img.width * img.height > limit:
        raise BadImage(f"{img.width}×{img.height} pixels is above the limit of {limit} (decompression-bomb guard)")
    try:
        img = _convert_mode(img)
        if channels == 1 and img.mode != "L":
            img = img.convert("L")
        elif channels == 3 and img.mode != "RGB":
            img = img.convert("RGB")
        if image_size is not None:
            img = _resize_crop(img, image_size, image_size if resize is None else resize, resample)
        arr = np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # truncated, corrupt
        raise BadImage(f"cannot decode: {' '.join(str(e).split()) or type(e).__name__}") from e
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _resize_crop(img: Image.Image, crop: int, shorter: int, resample: Image.Resampling) -> Image.Image:
    """torchvision's ``Resize(shorter, resample) + CenterCrop(crop)`` on a PIL image (same size, filter and
    offsets; PIL's resize antialiases, as torchvision's PIL path does)."""
    new_w, new_h = resize_shape(img.width, img.height, shorter)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), resample)
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    if (left, top, crop, crop) != (0, 0, new_w, new_h):
        img = img.crop((left, top, left + crop, top + crop))
    return img


def _convert_mode(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("L", "RGB"):
        img.load()
        return img
    if mode.startswith("I"):  # 16-bit (I;16, I;16B, ...) or 32-bit integer: assume a 16-bit range
        a = np.asarray(img).astype(np.int64)
        a = (np.clip(a, 0, 65535) * 255 + 32767) // 65535
        return Image.fromarray(a.astype(np.uint8), "L")
    if mode == "F":
        a = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255)
        return Image.fromarray(a.astype(np.uint8), "L")
    if mode in GREY_MODES:  # 1, LA, La
        return img.convert("L")
    return img.convert("RGB")


def as_pil(image: Any) -> Image.Image:
    """One image (PIL, or a uint8 / [0, 1]-float tensor or array) as a PIL image; a DataError for any other object,
    shape or range (floats outside [0, 1] are already normalised: :func:`to_float32` takes those)."""
    if isinstance(image, Image.Image):
        return image
    arr = image_array(image)
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f":
            if not np.isfinite(arr).all():
                raise DataError(_NOT_FINITE)
            if arr.size and (arr.min() < -_TOLERANCE or arr.max() > 1 + _TOLERANCE):
                raise DataError(
                    f"a float image has values in [{float(arr.min()):.3g}, {float(arr.max()):.3g}], outside [0, 1], "
                    "where the data's first images are in [0, 1]; return every image the same way: all in [0, 1] "
                    "(ToTensor) or all normalised"
                )
            arr = np.rint(np.clip(arr, 0, 1) * 255)
        elif arr.dtype.kind not in "iub" or (arr.size and (arr.min() < 0 or arr.max() > 255)):
            raise DataError(f"an integer image of dtype {arr.dtype} has values outside 0..255; return uint8 images")
        arr = arr.astype(np.uint8)
    mode = "L" if arr.ndim == 2 else ("RGB" if arr.shape[2] == 3 else "RGBA")
    return Image.fromarray(np.ascontiguousarray(arr), mode)


def image_array(image: Any) -> np.ndarray:
    """A tensor (C, H, W) / (H, W) or an array (H, W, C) / (H, W) as a numpy array (H, W) or (H, W, 3|4), its
    dtype kept; a DataError for another object or shape."""
    arr, layout = _as_numpy(image)
    if arr is None:
        raise DataError(
            f"an image must be a PIL image, a tensor or an array, got {type(image).__name__}; "
            "return (PIL image or tensor, int) from the dataset"
        )
    if layout == "CHW" and arr.ndim == 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise DataError(
            f"an image tensor must be (H, W), (1|3|4, H, W) (tensor) or (H, W, 1|3|4) (array), got shape "
            f"{tuple(np.shape(image))}; return one image per item"
        )
    return arr


# Float images outside [0, 1] are what a pipeline yields after transforms.Normalize: they are kept as given. Floats
# that are never negative but exceed PIXEL_LIKE are 0..255 pixel values stored as floats (normalised images have
# values below their mean, so negative ones, and natural images normalised with any usual mean/std stay within a
# few units of 0): those are refused, as are NaN and infinite values.
PIXEL_LIKE = 10.0
_TOLERANCE = 1e-3
_NOT_FINITE = "a float image has NaN or infinite values; fix the data (a std of 0 in Normalize gives them)"
NORMALISED_RULE = (
    "already-normalised floats (values outside [0, 1]) kept as given in float32, no mean/std applied; alpha dropped; "
    "grey replicated to 3 channels, or colour made grey with PIL's luma weights (0.299, 0.587, 0.114), when asked"
)
TENSOR_RESIZE_RULE = (
    "shorter side to R (default S) with torch's interpolate (antialiased bilinear by default, or bicubic; nearest), "
    "centre crop S×S: torchvision Resize(R, interpolation)+CenterCrop(S) on a tensor"
)


def are_normalised(low: float, high: float, finite: bool, what: str) -> bool:
    """Whether float images whose values span [``low``, ``high``] are already normalised (used as given) rather than
    in [0, 1] (scaled to 0..255). A DataError (``what`` names the data) for what is clearly wrong: NaN or infinite
    values, or none below 0 with some above :data:`PIXEL_LIKE` (0..255 pixel values as floats)."""
    if not finite:
        raise DataError(f"NaN or infinite values in {what}; fix the data (a std of 0 in Normalize gives them)")
    if low >= -_TOLERANCE and high > PIXEL_LIKE:
        raise DataError(
            f"float values in [{low:.3g}, {high:.3g}] in {what}, none negative: 0..255 pixel values stored as floats, "
            "neither [0, 1] nor normalised; divide them by 255 (as ToTensor does) or give uint8 images"
        )
    return low < -_TOLERANCE or high > 1 + _TOLERANCE


_LUMA = (0.299, 0.587, 0.114)  # PIL's convert("L") (ITU-R 601-2), as torchvision's rgb_to_grayscale


def to_float32(
    image: Any,
    image_size: int | None = None,
    channels: int | None = None,
    resize: int | None = None,
    interpolation: str | None = None,
) -> np.ndarray:
    """An already-normalised float image (tensor (C, H, W) / (H, W), array (H, W, C) / (H, W)) as a float32
    (C, H, W) array by :data:`NORMALISED_RULE`: values kept, alpha dropped, channels as ``channels`` asks,
    resized by :data:`TENSOR_RESIZE_RULE` (R = ``resize``, default ``image_size``; S = ``image_size``). A
    DataError for an image that is not float or has NaN or infinite values."""
    import torch

    arr = image_array(image)
    if arr.dtype.kind != "f":
        raise DataError(
            f"an image of dtype {arr.dtype} among already-normalised float images; return every image the same "
            "way (all normalised floats)"
        )
    if not np.isfinite(arr).all():
        raise DataError(_NOT_FINITE)
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)[:3]
    if channels == 3 and x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    elif channels == 1 and x.shape[0] == 3:
        x = (torch.tensor(_LUMA).view(3, 1, 1) * x).sum(0, keepdim=True)
    if image_size is not None:
        x = _resize_crop_tensor(x, image_size, image_size if resize is None else resize, interpolation)
    return x.contiguous().numpy()


TENSOR_FILTERS = ("bilinear", "bicubic", "nearest")  # torchvision's filters on a tensor, as torch's interpolate


def check_tensor_filter(interpolation: str | None) -> None:
    """A SettingsError unless already-normalised floats can be resized with ``interpolation`` (None: bilinear)."""
    name = (interpolation or DEFAULT_INTERPOLATION).lower()
    if name not in TENSOR_FILTERS:
        raise SettingsError(
            f"interpolation={interpolation!r} cannot resize already-normalised float images; use one of "
            f"{', '.join(TENSOR_FILTERS)}, or resize the images before Normalize"
        )


def _resize_crop_tensor(x: Any, crop: int, shorter: int, interpolation: str | None) -> Any:
    """torchvision's ``Resize(shorter, interpolation) + CenterCrop(crop)`` on a float (C, H, W) tensor."""
    import torch.nn.functional as F

    check_tensor_filter(interpolation)
    mode = (interpolation or DEFAULT_INTERPOLATION).lower()
    height, width = int(x.shape[1]), int(x.shape[2])
    new_w, new_h = resize_shape(width, height, shorter)
    if (new_w, new_h) != (width, height):
        smooth = mode != "nearest"
        x = F.interpolate(
            x[None], size=(new_h, new_w), mode=mode, align_corners=False if smooth else None, antialias=smooth
        )[0]
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    return x[:, top : top + crop, left : left + crop]


def _as_numpy(image: Any) -> tuple[np.ndarray | None, str]:
    import torch

    if isinstance(image, torch.Tensor):
        return image.detach().cpu().numpy(), "CHW"
    if isinstance(image, np.ndarray):
        return image, "HWC"
    return None, ""
