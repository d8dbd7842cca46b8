//! The host's dmabuf format table narrowed to what the guest can allocate, indices remapped.

use super::*;

/// The guest's format table: the host's entries the guest can allocate, in the host's order;
/// returns the sealed memfd, its size and the host index → guest index map.
pub(super) fn guest_format_table(
    host: &[u8],
) -> Result<(OwnedFd, u32, Vec<Option<u16>>), SessionError> {
    let table =
        FormatTable::from_bytes(host).map_err(|e| host_err(format!("format table: {e}")))?;
    let mut map = Vec::with_capacity(table.len());
    let mut kept: Vec<FormatModifier> = Vec::new();
    for i in 0..table.len() {
        let pair = u16::try_from(i)
            .ok()
            .and_then(|i| table.get(i).ok())
            .ok_or_else(|| host_err("format table index"))?;
        if pair.is_linear() {
            map.push(u16::try_from(kept.len()).ok());
            kept.push(pair);
        } else {
            map.push(None);
        }
    }
    let guest = FormatTable::from_pairs(kept).map_err(|e| host_err(e.to_string()))?;
    let bytes = guest.as_bytes();
    let fd = sealed_memfd("crossway-format-table", bytes)
        .map_err(|e| host_err(format!("guest memfd: {e}")))?;
    let size = u32::try_from(bytes.len()).map_err(|_| host_err("format table size"))?;
    Ok((fd, size, map))
}
