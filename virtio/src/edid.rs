//! A synthesized EDID 1.4 base block for a scanout (VESA E-EDID, release A rev. 2): one
//! preferred detailed timing at 60 Hz with reduced blanking, and a monitor name.

/// The 128-byte EDID of a `width`x`height` display.
pub fn edid(width: u32, height: u32) -> [u8; 128] {
    let mut e = [0u8; 128];
    e[..8].copy_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    // Manufacturer "CWY": three 5-bit letters, big-endian.
    let id: u16 = ((b'C' - b'@') as u16) << 10 | ((b'W' - b'@') as u16) << 5 | (b'Y' - b'@') as u16;
    e[8..10].copy_from_slice(&id.to_be_bytes());
    e[10..12].copy_from_slice(&1u16.to_le_bytes()); // product code
    e[16] = 1; // week
    e[17] = 36; // 2026 - 1990
    e[18] = 1; // version 1.4
    e[19] = 4;
    e[20] = 0xa5; // digital, 8 bits per colour, DisplayPort
    // Physical size at about 96 dpi, in cm.
    e[21] = ((width as u64 * 254 / 9600).min(255)) as u8;
    e[22] = ((height as u64 * 254 / 9600).min(255)) as u8;
    e[23] = 120; // gamma 2.2
    e[24] = 0x06; // sRGB default, preferred timing includes native format
    // sRGB chromaticity coordinates.
    e[25..35].copy_from_slice(&[0xee, 0x91, 0xa3, 0x54, 0x4c, 0x99, 0x26, 0x0f, 0x50, 0x54]);
    for i in 0..8 {
        e[38 + 2 * i] = 0x01; // unused standard timings
        e[39 + 2 * i] = 0x01;
    }
    // Detailed timing, CVT reduced-blanking-like: 160 px horizontal, >= 460 us vertical blank.
    let w = width.clamp(1, 4095);
    let h = height.clamp(1, 4095);
    let hblank: u32 = 160;
    let vblank: u32 = (h * 46 / 1000).max(8);
    let clock_10khz = ((w + hblank) as u64 * (h + vblank) as u64 * 60 / 10_000).min(65535) as u16;
    let (wcm, hcm) = (e[21] as u32 * 10, e[22] as u32 * 10); // mm
    let d = &mut e[54..72];
    d[0..2].copy_from_slice(&clock_10khz.to_le_bytes());
    d[2] = (w & 0xff) as u8;
    d[3] = (hblank & 0xff) as u8;
    d[4] = (((w >> 8) as u8) << 4) | ((hblank >> 8) as u8 & 0xf);
    d[5] = (h & 0xff) as u8;
    d[6] = (vblank & 0xff) as u8;
    d[7] = (((h >> 8) as u8) << 4) | ((vblank >> 8) as u8 & 0xf);
    d[8] = 48; // h front porch
    d[9] = 32; // h sync
    d[10] = (3 << 4) | 5; // v front porch 3, v sync 5
    d[11] = 0;
    d[12] = (wcm & 0xff) as u8;
    d[13] = (hcm & 0xff) as u8;
    d[14] = ((((wcm >> 8) & 0xf) as u8) << 4) | ((hcm >> 8) & 0xf) as u8;
    d[17] = 0x1e; // digital separate sync, +h +v
    // Monitor name descriptor.
    let n = &mut e[72..90];
    n[3] = 0xfc;
    let name = b"Crossway\n    ";
    n[5..18].copy_from_slice(name);
    // Two dummy descriptors.
    e[93] = 0x10;
    e[111] = 0x10;
    e[126] = 0; // no extensions
    let sum: u8 = e[..127].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    e[127] = 0u8.wrapping_sub(sum);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edid_checksum_and_mode_are_valid() {
        let e = edid(1920, 1080);
        assert_eq!(e.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(e[56] as u32 | ((e[58] as u32 >> 4) << 8), 1920);
        assert_eq!(e[59] as u32 | ((e[61] as u32 >> 4) << 8), 1080);
    }
}
