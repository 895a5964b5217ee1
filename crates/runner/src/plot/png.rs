//! Palette PNGs: the figures' flat colours in one byte a pixel.

use std::path::Path;

use anyhow::Context;

/// Writes RGB `pixels` as an 8-bit palette PNG, 3–4× smaller than RGB for figures (flat
/// colours, white ground). A figure with at most 256 colours keeps them exactly; above
/// that, NeuQuant (Dekker 1994) picks the 256, which only shifts the anti-aliased edges.
pub(super) fn write_palette_png(
    path: &Path,
    (width, height): (u32, u32),
    pixels: &[u8],
) -> anyhow::Result<()> {
    let mut exact: Vec<[u8; 3]> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for p in pixels.chunks_exact(3) {
        let rgb = [p[0], p[1], p[2]];
        if let std::collections::hash_map::Entry::Vacant(slot) = seen.entry(rgb) {
            if exact.len() == 256 {
                exact.clear();
                break;
            }
            slot.insert(exact.len() as u8);
            exact.push(rgb);
        }
    }
    let (palette, indices): (Vec<u8>, Vec<u8>) = if exact.is_empty() {
        let rgba: Vec<u8> = pixels
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect();
        let quantizer = color_quant::NeuQuant::new(10, 256, &rgba);
        let indices = rgba
            .chunks_exact(4)
            .map(|p| quantizer.index_of(p) as u8)
            .collect();
        (quantizer.color_map_rgb(), indices)
    } else {
        let indices = pixels
            .chunks_exact(3)
            .map(|p| seen[&[p[0], p[1], p[2]]])
            .collect();
        (exact.concat(), indices)
    };
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_palette(palette);
    encoder.set_compression(png::Compression::Best);
    let mut writer = encoder
        .write_header()
        .with_context(|| format!("writing {}", path.display()))?;
    writer
        .write_image_data(&indices)
        .with_context(|| format!("writing {}", path.display()))?;
    writer
        .finish()
        .with_context(|| format!("writing {}", path.display()))
}
