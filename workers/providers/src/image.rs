//! Screenshot validation for the vision role: PNG or JPEG only (by magic
//! bytes, not by what the client claims), dimensions read from the header,
//! size limits. Anything else is refused with `invalid_input` and a message a
//! user can act on, before a model API is paid to look at garbage.

use bytes::Bytes;
use orch_worker::WorkError;

use crate::chat::ImageInput;

/// Largest screenshot accepted: OpenAI's per-image limit is 20 MB. (The
/// coordinator's own request limit is lower; this guards direct callers.)
pub const DEFAULT_MAX_IMAGE_BYTES: usize = 20 * 1024 * 1024;
/// Longest side in pixels. Bigger screenshots are downscaled by every vision
/// API anyway, and huge dimensions are a classic decompression bomb.
pub const DEFAULT_MAX_IMAGE_SIDE: u32 = 8192;

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";
const JPEG_MAGIC: &[u8] = b"\xff\xd8\xff";

/// Limits applied to screenshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest encoded size, in bytes.
    pub max_bytes: usize,
    /// Largest width and height, in pixels.
    pub max_side: u32,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_side: DEFAULT_MAX_IMAGE_SIDE,
        }
    }
}

/// A validated image and its dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedImage {
    /// The image, ready to attach to a chat request.
    pub input: ImageInput,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Checks that `data` is a PNG or JPEG within `limits`.
///
/// # Errors
/// [`WorkError`] with code `invalid_input` saying what is wrong.
pub fn validate(data: &Bytes, limits: &ImageLimits) -> Result<CheckedImage, WorkError> {
    if data.is_empty() {
        return Err(WorkError::invalid_input("the screenshot is empty"));
    }
    if data.len() > limits.max_bytes {
        return Err(WorkError::invalid_input(format!(
            "the screenshot is {} bytes; the limit is {}",
            data.len(),
            limits.max_bytes
        )));
    }
    let mime = if data.starts_with(PNG_MAGIC) {
        "image/png"
    } else if data.starts_with(JPEG_MAGIC) {
        "image/jpeg"
    } else {
        return Err(WorkError::invalid_input(format!(
            "the screenshot is not a PNG or JPEG image (it starts with {})",
            hex_prefix(data)
        )));
    };
    let size = imagesize::blob_size(data).map_err(|e| {
        WorkError::invalid_input(format!(
            "the screenshot looks like {mime} but its header is unreadable ({e})"
        ))
    })?;
    let (width, height) = (
        u32::try_from(size.width).unwrap_or(u32::MAX),
        u32::try_from(size.height).unwrap_or(u32::MAX),
    );
    if width == 0 || height == 0 {
        return Err(WorkError::invalid_input(format!(
            "the screenshot has no pixels ({width}x{height})"
        )));
    }
    if width > limits.max_side || height > limits.max_side {
        return Err(WorkError::invalid_input(format!(
            "the screenshot is {width}x{height} pixels; the limit is {0}x{0}",
            limits.max_side
        )));
    }
    Ok(CheckedImage {
        input: ImageInput {
            mime,
            data: data.clone(),
        },
        width,
        height,
    })
}

fn hex_prefix(data: &[u8]) -> String {
    let hex: Vec<String> = data.iter().take(8).map(|b| format!("{b:02x}")).collect();
    hex.join(" ")
}

/// A minimal valid PNG of `width`x`height` (header only plus an empty IDAT),
/// for tests here and in the integration suite.
pub fn test_png(width: u32, height: u32) -> Bytes {
    let mut v = PNG_MAGIC.to_vec();
    v.extend_from_slice(&13u32.to_be_bytes());
    v.extend_from_slice(b"IHDR");
    v.extend_from_slice(&width.to_be_bytes());
    v.extend_from_slice(&height.to_be_bytes());
    v.extend_from_slice(&[8, 6, 0, 0, 0]);
    v.extend_from_slice(&[0, 0, 0, 0]); // CRC (not checked by header readers)
    v.extend_from_slice(&0u32.to_be_bytes());
    v.extend_from_slice(b"IEND");
    v.extend_from_slice(&[0xae, 0x42, 0x60, 0x82]);
    Bytes::from(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(width: u16, height: u16) -> Bytes {
        let mut v = vec![0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10];
        v.extend_from_slice(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
        v.extend_from_slice(&[0xff, 0xc0, 0x00, 0x11, 0x08]);
        v.extend_from_slice(&height.to_be_bytes());
        v.extend_from_slice(&width.to_be_bytes());
        v.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        v.extend_from_slice(&[0xff, 0xd9]);
        Bytes::from(v)
    }

    #[test]
    fn accepts_png_and_jpeg_with_dimensions() {
        let l = ImageLimits::default();
        let p = validate(&test_png(640, 480), &l).unwrap();
        assert_eq!((p.input.mime, p.width, p.height), ("image/png", 640, 480));
        let j = validate(&jpeg(1024, 768), &l).unwrap();
        assert_eq!((j.input.mime, j.width, j.height), ("image/jpeg", 1024, 768));
    }

    #[test]
    fn refuses_garbage_with_clear_messages() {
        let l = ImageLimits::default();
        let code = |b: Bytes| validate(&b, &l).unwrap_err();
        let e = code(Bytes::from_static(b"GIF89a......"));
        assert_eq!(e.code, orch_shared::ErrorCode::InvalidInput);
        assert!(e.message.contains("not a PNG or JPEG"), "{e}");
        assert!(code(Bytes::new()).message.contains("empty"));
        // PNG magic, then nothing.
        let e = code(Bytes::from_static(b"\x89PNG\r\n\x1a\n"));
        assert!(e.message.contains("header is unreadable"), "{e}");
        // Truncated JPEG.
        let e = code(Bytes::from_static(b"\xff\xd8\xff\xe0\x00\x10JF"));
        assert!(e.message.contains("header is unreadable"), "{e}");
        let e = code(test_png(0, 10));
        assert!(e.message.contains("no pixels"), "{e}");
        let e = code(test_png(8193, 10));
        assert!(e.message.contains("8193x10"), "{e}");
        let small = ImageLimits { max_bytes: 10, ..l };
        let e = validate(&test_png(1, 1), &small).unwrap_err();
        assert!(e.message.contains("limit is 10"), "{e}");
    }
}
