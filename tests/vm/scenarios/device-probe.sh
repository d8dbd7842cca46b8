# shellcheck shell=bash disable=SC2034,SC2154 # tests/vm/run reads the settings, sets the logs
# device-probe (host half, sourced by tests/vm/run): the Linux virtio_gpu driver probes the
# device served by `crossway-proxy serve`, counts its capsets, and runs fbcon on it.
#
# QEMU 10 forwards only VIRGL, EDID and RESOURCE_UUID from a vhost-user-gpu backend, never
# RESOURCE_BLOB or CONTEXT_INIT, so the guest sees "-resource_blob" and "-context_init" and
# cannot create a cross-domain context: probing, capsets and the console are what QEMU 10 can
# prove. The guest half is device-probe.guest.
scenario_modules=(virtio_gpu)
scenario_qemu_args=()

scenario_check() {
    expect "device found" '^dmesg: .*\[drm\] pci: virtio-gpu-pci detected'
    expect "features (VIRGL forwarded)" '^dmesg: .*\[drm\] features: \+virgl'
    local n described line
    n=$(sed -n 's/^dmesg: .*\[drm\] number of cap sets: \([0-9]*\)$/\1/p' "$guest_log" | head -n 1)
    described=$(grep -c -E '^dmesg: .*\[drm\] cap set [0-9]+: id [0-9]+, ' "$guest_log" || true)
    if [ "${n:-0}" -ge 1 ] && [ "$described" -eq "$n" ]; then
        ok "capsets counted and described: $n"
    else
        bad "capsets: the driver counted ${n:-none} and described $described"
    fi
    expect "cross-domain capset" '^dmesg: .*\[drm\] cap set [0-9]+: id 5, max-version 0, max-size 16$'
    if line=$(grep -m 1 -E '^dmesg: .*\[drm\] cap set [0-9]+: id 48,' "$guest_log"); then
        ok "Crossway capset listed: ${line#dmesg: }"
    else
        echo "  note  no Crossway capset (id 48) listed"
    fi
    expect "driver initialised" '^dmesg: .*\[drm\] Initialized virtio_gpu '
    expect "framebuffer" '^dmesg: .*fb0: virtio_gpudrmfb frame buffer device'
    expect "fbcon took the console" '^dmesg: .*Console: switching to colour frame buffer device'
    # The driver reports each command the device answered with an error as "*ERROR* response".
    reject "no driver errors" '\*ERROR\*|virtio_gpu.*(timed out|fail)'
    # The console's pixels reached the device: TRANSFER_TO_HOST_2D copied guest pages, and no
    # command was answered with an error.
    expect "backend counters at disconnect: every command answered, console pixels copied" \
        'VMM disconnected .*errors: 0,.*bytes_copied: [1-9]' "$backend_log"
    reject "no backend errors" ' ERROR |panicked' "$backend_log"
}
