//! `crossway-bar-chart`: draws a PNG bar chart from tab-separated lines on stdin,
//! `PANEL<TAB>BAR<TAB>VALUE`, one panel per distinct PANEL (in order of first appearance), one
//! bar per line, each panel scaled to its own largest value. Labels are drawn with a built-in
//! 5x7 pixel font (upper case, digits, a little punctuation), so the chart needs nothing on the
//! machine but this binary. `scripts/compare` uses it.

#![forbid(unsafe_code)]

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use crossway_headless::Image;
use crossway_tests::pixels::opaque;

/// Draws a bar chart PNG from `PANEL<TAB>BAR<TAB>VALUE` lines on stdin.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// A title over the panels.
    #[arg(long, default_value = "")]
    title: String,
}

/// Glyphs of the 5x7 font: each row's low 5 bits, most significant bit leftmost.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        ' ' => [0; 7],
        // Unknown characters show as a hollow box rather than vanishing.
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

/// An opaque canvas, written with [`Image::save_png`].
struct Canvas(Image);

impl Canvas {
    fn new(width: u32, height: u32, background: [u8; 3]) -> Canvas {
        let pixels = width as usize * height as usize;
        Canvas(Image {
            width,
            height,
            rgba: opaque(background).repeat(pixels),
        })
    }

    fn rect(&mut self, x: u32, y: u32, w: u32, h: u32, colour: [u8; 3]) {
        let Image {
            width,
            height,
            rgba,
        } = &mut self.0;
        for yy in y..(y + h).min(*height) {
            for xx in x..(x + w).min(*width) {
                let i = (yy as usize * *width as usize + xx as usize) * 4;
                if let Some(px) = rgba.get_mut(i..i + 4) {
                    px.copy_from_slice(&opaque(colour));
                }
            }
        }
    }

    /// Draws `text` at (x, y), each font pixel `scale` pixels wide.
    fn text(&mut self, x: u32, y: u32, text: &str, scale: u32, colour: [u8; 3]) {
        for (i, c) in text.chars().enumerate() {
            let left = x + i as u32 * 6 * scale;
            for (row, bits) in glyph(c).iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.rect(
                            left + col * scale,
                            y + row as u32 * scale,
                            scale,
                            scale,
                            colour,
                        );
                    }
                }
            }
        }
    }
}

/// One bar per series, in the order series first appear; the same series keeps its colour
/// across panels.
const COLOURS: [[u8; 3]; 8] = [
    [0x4C, 0x72, 0xB0],
    [0x55, 0xA8, 0x68],
    [0xC4, 0x4E, 0x52],
    [0x81, 0x72, 0xB2],
    [0xCC, 0xB9, 0x74],
    [0x64, 0xB5, 0xCD],
    [0x8C, 0x8C, 0x8C],
    [0xE1, 0x81, 0x2C],
];

/// A value as a short label: 3 significant digits, thousands as K.
fn label(v: f64) -> String {
    let a = v.abs();
    if a >= 10_000.0 {
        format!("{:.0}K", v / 1000.0)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

type Panels = Vec<(String, Vec<(String, f64)>)>;

fn parse(input: &str) -> Result<Panels> {
    let mut panels: Panels = Vec::new();
    for (n, line) in input.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.split('\t');
        let (Some(panel), Some(bar), Some(value), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            bail!("line {}: expected PANEL<TAB>BAR<TAB>VALUE", n + 1);
        };
        let value: f64 = value
            .trim()
            .parse()
            .with_context(|| format!("line {}: {value:?} is not a number", n + 1))?;
        if !value.is_finite() {
            bail!("line {}: {value} is not finite", n + 1);
        }
        match panels.iter_mut().find(|(p, _)| p == panel) {
            Some((_, bars)) => bars.push((bar.to_owned(), value)),
            None => panels.push((panel.to_owned(), vec![(bar.to_owned(), value)])),
        }
    }
    if panels.is_empty() {
        bail!("no data on stdin");
    }
    Ok(panels)
}

fn draw(panels: &Panels, title: &str) -> Canvas {
    const PANEL_W: u32 = 300;
    const PLOT_H: u32 = 240;
    const MARGIN: u32 = 20;
    let mut series: Vec<&str> = Vec::new();
    for (_, bars) in panels {
        for (b, _) in bars {
            if !series.contains(&b.as_str()) {
                series.push(b);
            }
        }
    }
    let n = panels.len() as u32;
    let width = MARGIN + n * (PANEL_W + MARGIN);
    let legend_h = 16 * series.len() as u32 + MARGIN;
    let top = 50;
    let height = top + PLOT_H + 40 + legend_h;
    let mut c = Canvas::new(width, height, [255, 255, 255]);
    c.text(MARGIN, 14, title, 2, [0, 0, 0]);
    for (i, (panel, bars)) in panels.iter().enumerate() {
        let x0 = MARGIN + i as u32 * (PANEL_W + MARGIN);
        c.rect(x0, top, PANEL_W, PLOT_H, [0xF2, 0xF2, 0xF2]);
        c.text(x0 + 4, top + PLOT_H + 8, panel, 1, [0, 0, 0]);
        let max = bars.iter().map(|(_, v)| *v).fold(0.0_f64, f64::max);
        let slot = PANEL_W / bars.len().max(1) as u32;
        let bar_w = slot * 2 / 3;
        for (j, (name, v)) in bars.iter().enumerate() {
            let k = series.iter().position(|s| s == name).unwrap_or(0);
            let colour = COLOURS[k % COLOURS.len()];
            let h = if max > 0.0 {
                ((v.max(0.0) / max) * f64::from(PLOT_H - 24)).round() as u32
            } else {
                0
            };
            let x = x0 + j as u32 * slot + (slot - bar_w) / 2;
            c.rect(x, top + PLOT_H - h, bar_w, h, colour);
            c.text(x, top + PLOT_H - h - 10, &label(*v), 1, [0, 0, 0]);
        }
    }
    for (k, s) in series.iter().enumerate() {
        let y = top + PLOT_H + 32 + 16 * k as u32;
        c.rect(MARGIN, y, 10, 10, COLOURS[k % COLOURS.len()]);
        c.text(MARGIN + 16, y + 1, s, 1, [0, 0, 0]);
    }
    c
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let panels = parse(&input)?;
    draw(&panels, &args.title).0.save_png(&args.out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parse_groups_bars_by_panel_in_order() {
        let p = parse("A\tx\t1\nB\tx\t2\nA\ty\t3.5\n").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].0, "A");
        assert_eq!(p[0].1, vec![("x".into(), 1.0), ("y".into(), 3.5)]);
    }

    #[test]
    fn parse_bad_line_is_error() {
        assert!(parse("A\tx\n").is_err());
        assert!(parse("A\tx\tnope\n").is_err());
        assert!(parse("A\tx\tinf\n").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn draw_tallest_bar_reaches_near_top() {
        let c = draw(&parse("P\ta\t1\nP\tb\t2\n").unwrap(), "T");
        // Bar b is the panel's maximum: its colour appears 30 px below the plot's top.
        let colour = COLOURS[1];
        let y = 50 + 30;
        let found = (0..c.0.width).any(|x| c.0.pixel(x, y) == Some(opaque(colour)));
        assert!(found);
    }
}
