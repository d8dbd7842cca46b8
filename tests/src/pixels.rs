//! The pictures our test clients draw, and checking a window's pixels against them: one place
//! for each pattern, so a client and the scenarios that check it cannot drift apart.
//!
//! - [`test_client_rgb`]: `crossway-test-client`'s picture A (quadrants red, green, blue,
//!   white and an 8x8 yellow/black checker at the top left); picture B is A turned half a
//!   turn ([`turned`]).
//! - [`quadrants_rgb`]: `crossway-xd-guest`'s picture (the quadrants only).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use crossway_headless::Image;
use crossway_headless::control::request;
use serde_json::{Value, json};

use crate::eventually;

/// `crossway-test-client`'s picture A at (x, y) of a `w` x `h` window, RGB.
pub fn test_client_rgb(x: u32, y: u32, w: u32, h: u32) -> [u8; 3] {
    if x < 8 && y < 8 {
        return if (x + y).is_multiple_of(2) {
            [255, 255, 0]
        } else {
            [0, 0, 0]
        };
    }
    quadrants_rgb(x, y, w, h)
}

/// `crossway-xd-guest`'s picture at (x, y) of a `w` x `h` window, RGB: quadrants red, green
/// (top right), blue (bottom left), white.
pub fn quadrants_rgb(x: u32, y: u32, w: u32, h: u32) -> [u8; 3] {
    match (x < w / 2, y < h / 2) {
        (true, true) => [255, 0, 0],
        (false, true) => [0, 255, 0],
        (true, false) => [0, 0, 255],
        (false, false) => [255, 255, 255],
    }
}

/// Where picture B (A turned half a turn) takes (x, y) of a `w` x `h` window from in A.
pub fn turned(x: u32, y: u32, w: u32, h: u32) -> (u32, u32) {
    (w - 1 - x, h - 1 - y)
}

/// An opaque RGBA pixel.
pub fn opaque([r, g, b]: [u8; 3]) -> [u8; 4] {
    [r, g, b, 255]
}

/// A pixel that differs: where, what is there (`None` outside the image), what was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrongPixel {
    /// Its column and row.
    pub at: (u32, u32),
    /// What the image has.
    pub got: Option<[u8; 4]>,
    /// What was expected.
    pub want: [u8; 4],
}

/// How an image differs from what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PixelDiff {
    /// The image's size, when it is not the expected one (then no pixel was compared).
    pub size: Option<(u32, u32)>,
    /// Pixels that differ.
    pub wrong: usize,
    /// The first that differs, row by row: (x, y), what is there, what was expected.
    pub first: Option<WrongPixel>,
}

impl PixelDiff {
    /// Whether the image is exactly what was expected.
    pub fn exact(&self) -> bool {
        self.size.is_none() && self.wrong == 0
    }
}

impl std::fmt::Display for PixelDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((w, h)) = self.size {
            return write!(f, "image is {w}x{h}");
        }
        write!(f, "{} pixels differ", self.wrong)?;
        if let Some(WrongPixel {
            at: (x, y),
            got,
            want,
        }) = self.first
        {
            write!(f, ", first at ({x},{y}): {got:?} instead of {want:?}")?;
        }
        Ok(())
    }
}

/// Compares every pixel of `image`, which must be `w` x `h`, with `expected(x, y)` (RGBA).
pub fn compare(
    image: &Image,
    (w, h): (u32, u32),
    expected: impl Fn(u32, u32) -> [u8; 4],
) -> PixelDiff {
    if (image.width, image.height) != (w, h) {
        return PixelDiff {
            size: Some((image.width, image.height)),
            wrong: 0,
            first: None,
        };
    }
    let mut diff = PixelDiff {
        size: None,
        wrong: 0,
        first: None,
    };
    for y in 0..h {
        for x in 0..w {
            let (got, want) = (image.pixel(x, y), expected(x, y));
            if got != Some(want) {
                diff.wrong += 1;
                diff.first.get_or_insert(WrongPixel {
                    at: (x, y),
                    got,
                    want,
                });
            }
        }
    }
    diff
}

/// Asks the headless compositor at `control` to wait (up to 30 s) for the toplevel titled
/// `title`; returns what it reports of it (`app_id`, `title`, …).
pub fn wait_toplevel(control: &Path, title: &str) -> Result<Value> {
    request(
        control,
        &json!({"wait_toplevel": {"title": title, "timeout_ms": 30000}}),
    )
    .with_context(|| format!("no toplevel {title:?}"))
}

/// Takes screenshots of the toplevel `title` of the headless compositor at `control` (into
/// `png`) until every pixel is `expected(x, y)` (RGBA) or 20 s have passed: the first frames
/// may still be on their way. Returns the last comparison.
pub fn wait_for_pixels(
    control: &Path,
    png: &Path,
    title: &str,
    size: (u32, u32),
    expected: impl Fn(u32, u32) -> [u8; 4],
) -> Result<PixelDiff> {
    let mut last = None;
    let mut failed = None;
    eventually(Duration::from_secs(20), || {
        let shot = request(
            control,
            &json!({"toplevel_screenshot": {"title": title, "path": png}}),
        )
        .and_then(|_| Image::load_png(png));
        match shot {
            Ok(shot) => {
                let diff = compare(&shot, size, &expected);
                let exact = diff.exact();
                last = Some(diff);
                exact
            }
            Err(e) => {
                failed = Some(e);
                true
            }
        }
    });
    if let Some(e) = failed {
        return Err(e.context(format!("screenshot of {title:?}")));
    }
    last.context("no screenshot taken")
}

/// [`wait_toplevel`], then [`wait_for_pixels`] with a screenshot file next to `png`; fails
/// unless the window shows exactly `expected`. Returns what the compositor reports of it.
pub fn assert_window_pixels(
    control: &Path,
    png: &Path,
    title: &str,
    size: (u32, u32),
    expected: impl Fn(u32, u32) -> [u8; 4],
) -> Result<Value> {
    let found = wait_toplevel(control, title)?;
    let diff = wait_for_pixels(control, png, title, size, expected)?;
    anyhow::ensure!(diff.exact(), "window {title:?}: {diff}");
    Ok(found)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn compare_counts_wrong_pixels_and_names_the_first() {
        let (w, h) = (4, 2);
        let mut rgba: Vec<u8> = (0..h)
            .flat_map(|y| (0..w).flat_map(move |x| opaque(quadrants_rgb(x, y, w, h))))
            .collect();
        let image = Image::from_rgba(w, h, rgba.clone()).unwrap();
        let quads = |x, y| opaque(quadrants_rgb(x, y, w, h));
        assert!(compare(&image, (w, h), quads).exact());
        rgba[(w as usize + 1) * 4] = 7;
        let image = Image::from_rgba(w, h, rgba).unwrap();
        let diff = compare(&image, (w, h), quads);
        assert_eq!((diff.wrong, diff.first.map(|f| f.at)), (1, Some((1, 1))));
        assert_eq!(compare(&image, (2, 2), quads).size, Some((4, 2)));
    }

    #[test]
    fn test_client_picture_b_is_a_turned_half_a_turn() {
        let (w, h) = (20, 10);
        let (x, y) = turned(0, 0, w, h);
        assert_eq!(test_client_rgb(x, y, w, h), [255, 255, 255]);
        assert_eq!(test_client_rgb(1, 0, w, h), [0, 0, 0]);
        assert_eq!(test_client_rgb(12, 0, w, h), [0, 255, 0]);
    }
}
