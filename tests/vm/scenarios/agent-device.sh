# shellcheck shell=bash disable=SC2034,SC2154 # tests/vm/run reads the settings, sets the logs
# agent-device (host half, sourced by tests/vm/run): inside the guest, crossway-virtgpu-probe
# opens /dev/dri/renderD128 through crossway_agent::device::AgentDevice (found by
# find_virtio_render_node, no CROSSWAY_VIRTGPU set) and makes the real virtgpu ioctls.
#
# QEMU 10 forwards VIRGL, EDID and RESOURCE_UUID from a vhost-user-gpu backend but neither
# RESOURCE_BLOB nor CONTEXT_INIT, so the kernel refuses CONTEXT_INIT and RESOURCE_CREATE_BLOB
# with EINVAL: the probe reports those as "unsupported by this VMM" and this file asserts
# exactly that, and everything else the agent's device code does on a real kernel: GETPARAM,
# GET_CAPS 5 and 48 (sizes found by the double read), handle ioctls refused by the GEM lookup
# (ENOENT), and on a real GEM object (a dumb buffer of card0 imported with PRIME):
# RESOURCE_INFO, MAP + mmap sharing pages with card0's mapping, WAIT, PRIME both ways,
# GEM_CLOSE. The guest half is agent-device.guest.
scenario_modules=(virtio_gpu)
scenario_qemu_args=()
scenario_binaries=(crossway-virtgpu-probe)

# probe_line WHAT LINE: the probe printed exactly LINE.
probe_line() {
    if grep -q -x -F -- "probe: $2" "$guest_log"; then
        ok "$1: $2"
    else
        bad "$1: no probe line '$2'"
    fi
}

scenario_check() {
    probe_line "opened through AgentDevice" "address render node /dev/dri/renderD128"
    expect "render node dev_t" '^probe: driver virtio_gpu rdev 226:128$'
    probe_line "find_virtio_render_node" "find_virtio_render_node /dev/dri/renderD128"
    # What QEMU 10 forwards: VIRGL (3D_FEATURES), RESOURCE_UUID (CROSS_DEVICE); not
    # RESOURCE_BLOB, host-visible memory or CONTEXT_INIT. The kernel answers CAPSET_QUERY_FIX
    # with 1 always and EXPLICIT_DEBUG_NAME with CONTEXT_INIT's value.
    probe_line "GETPARAM 3D_FEATURES" "param 3D_FEATURES 0x1"
    probe_line "GETPARAM CAPSET_QUERY_FIX" "param CAPSET_QUERY_FIX 0x1"
    probe_line "GETPARAM RESOURCE_BLOB" "param RESOURCE_BLOB 0x0"
    probe_line "GETPARAM HOST_VISIBLE" "param HOST_VISIBLE 0x0"
    probe_line "GETPARAM CONTEXT_INIT" "param CONTEXT_INIT 0x0"
    probe_line "GETPARAM EXPLICIT_DEBUG_NAME" "param EXPLICIT_DEBUG_NAME 0x0"
    # serve says so, once, and what to use instead.
    expect "serve warns that the VMM withholds cross-domain's features" \
        'WARN .*vhost-user-test-device-pci.*missing="VIRTIO_GPU_F_CONTEXT_INIT, VIRTIO_GPU_F_RESOURCE_BLOB"' "$backend_log"
    # Capsets 5 and 48: bits 5 and 48. The 6.12 kernel itself reports 0x10020 (a 32-bit shift
    # folds id 48 onto bit 16); RenderNode repairs the mask with GET_CAPS
    # (crossway_agent::drm::repair_capset_mask), so the agent sees what the device offers.
    probe_line "GETPARAM SUPPORTED_CAPSET_IDS" "param SUPPORTED_CAPSET_IDS 0x1000000000020"
    probe_line "GET_CAPS 5 (16 bytes, Wayland channel)" "caps 5 wayland"
    expect "GET_CAPS 48 parsed as the Crossway capset" '^probe: caps 48 flags 0x[0-9a-f]+ formats [0-9]+$'
    probe_line "CONTEXT_INIT refused by the kernel" "context_init unsupported by this VMM: EINVAL"
    probe_line "RESOURCE_CREATE_BLOB refused by the kernel" "guest blob unsupported by this VMM: EINVAL"
    probe_line "no EXECBUFFER without a cross-domain context" \
        "execbuffer skipped: needs CONTEXT_INIT and blobs"
    probe_line "handle ioctls reach the GEM lookup" \
        "bogus handle: RESOURCE_INFO ENOENT, MAP ENOENT, WAIT ENOENT, PRIME_HANDLE_TO_FD ENOENT, GEM_CLOSE ENOENT"
    probe_line "PRIME import of a dumb buffer, RESOURCE_INFO" \
        "dumb 64x64 imported: pitch 256 size 16384 blob_mem 0"
    probe_line "MAP + mmap" "map ok: same pages as the primary node's mapping"
    probe_line "WAIT" "wait ok"
    probe_line "PRIME export and import in another file" "prime ok: same resource in another file"
    probe_line "GEM_CLOSE" "gem_close ok"
    probe_line "probe finished" "done"
    reject "probe failures" '^probe: failed:'
    reject "no driver errors" '\*ERROR\*|virtio_gpu.*(timed out|fail)'
    reject "no backend errors" ' ERROR |panicked' "$backend_log"
}
