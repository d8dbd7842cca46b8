# shellcheck shell=bash disable=SC2034,SC2154 # tests/vm/run reads the settings, sets the logs
# udmabuf (host half, sourced by tests/vm/run): the host side of Crossway runs *inside* the VM,
# whose 6.12 kernel has udmabuf built in, so guest blobs take the real zero-copy path. The VM
# gets the host's own root read-only over 9p (the workspace's binaries run as built, with the
# host's libraries) and a writable 9p folder for results; udmabuf.guest chroots into the root
# and runs udmabuf.inner, which does the work and the checks (see its header). This half
# judges what it wrote: the checks, the screenshots' names, and the figures.
#
# Environment: CROSSWAY_AGENT, CROSSWAY_TEST_CLIENT (the guest side; default
# target/debug/crossway-agent and target/debug/crossway-test-client, built when missing),
# CROSSWAY_PERF_FRAMES (frames per measured path, default 30), CROSSWAY_WESTON14_ROOT (weston 14
# unpacked by `scripts/deps weston14`; default $cache/weston14 when complete there: the
# second host compositor, skipped without it).
scenario_modules=(9pnet_virtio 9p)
scenario_qemu_args=()
scenario_backend=none
scenario_mem=1536M
scenario_smp=2
scenario_timeout=300

scenario_prepare() {
    local agent=${CROSSWAY_AGENT:-$repo/target/debug/crossway-agent}
    local test_client=${CROSSWAY_TEST_CLIENT:-$repo/target/debug/crossway-test-client}
    if [ ! -x "$agent" ]; then
        say "building crossway-agent"
        (cd "$repo" && cargo build --quiet -p crossway-agent --bin crossway-agent)
    fi
    if [ ! -x "$test_client" ]; then
        say "building crossway-test-client"
        (cd "$repo" && cargo build --quiet -p crossway-tests --bin crossway-test-client)
    fi
    mkdir -p "$work/out"
    # The guest sees the host's root at the same paths; the 9p share is read-only, and
    # multidevs=remap keeps inode numbers unique across the host's mounts.
    scenario_qemu_args=(
        -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
        -virtfs "local,path=$work/out,mount_tag=out,security_model=none"
    )
    local p
    for p in "$proxy" "$agent" "$test_client" "$here/scenarios/udmabuf.inner"; do
        case $p in
            /*[[:space:]]* | [!/]*)
                echo "vm/run: $p: the udmabuf scenario needs absolute paths without spaces" >&2
                exit 2
                ;;
        esac
    done
    scenario_append="crossway.proxy=$proxy crossway.agent=$agent crossway.test_client=$test_client"
    local weston14=${CROSSWAY_WESTON14_ROOT:-$cache/weston14}
    if [ -f "$weston14/.complete" ] || [ -n "${CROSSWAY_WESTON14_ROOT:-}" ]; then
        case $weston14 in
            /*[[:space:]]* | [!/]*) say "weston 14 at $weston14 cannot be named on the kernel command line: skipped" ;;
            *) scenario_append+=" crossway.weston14=$weston14" ;;
        esac
    fi
    scenario_append+=" crossway.inner=$here/scenarios/udmabuf.inner"
    scenario_append+=" crossway.perf_frames=${CROSSWAY_PERF_FRAMES:-30}"
}

scenario_check() {
    local checks=$work/out/checks figures=$work/out/figures line
    if [ ! -s "$checks" ]; then
        bad "the inner script wrote no checks ($checks)"
        return
    fi
    while IFS= read -r line; do
        case $line in
            "ok "*) ok "${line#ok }" ;;
            "skip "*) say "skipped: ${line#skip }" ;;
            *) bad "${line#FAIL }" ;;
        esac
    done <"$checks"
    # The screenshots, checked here: pure Python is too slow under TCG.
    local name pattern w h find msg
    while read -r name pattern w h find; do
        # shellcheck disable=SC2086 # find is empty or one word
        if msg=$(/usr/bin/python3 "$here/scenarios/udmabuf.pngcheck" "$work/out/$name.png" "$pattern" "$w" "$h" $find 2>&1); then
            ok "pattern $pattern on the host compositor: ${msg#"$work/out/"}"
        else
            bad "pattern $pattern on the host compositor: ${msg#"$work/out/"}"
        fi
    done <"$work/out/pictures"
    # What the issue asks for, each checked by the inner script; their absence is a failure
    # here too, so that a script that stopped early cannot pass.
    expect "udmabuf present in the VM" '^ok /dev/udmabuf exists' "$checks"
    grep -q '^pattern-a A ' "$work/out/pictures" || bad "no screenshot of pattern A"
    grep -q '^pattern-b B ' "$work/out/pictures" || bad "no screenshot of pattern B"
    expect "zero copies after the change" '^ok stats after pattern B: zero-copy dmabuf buffers [1-9][0-9]*, copy-path buffers 0, bytes copied 0$' "$checks"
    expect "one dmabuf from a long scatter list" '^ok a scatter list of [0-9]+ page ranges imported as one dmabuf' "$checks"
    expect "no copy in the guest (agent)" '^ok zero-copy phase: agent forwarded 2 dmabufs by resource id, copied 0, bytes copied 0$' "$checks"
    if ! grep -q '^skip weston 14' "$checks"; then
        grep -q '^weston-a A ' "$work/out/pictures" || bad "no weston 14 screenshot of pattern A"
        grep -q '^weston-b B ' "$work/out/pictures" || bad "no weston 14 screenshot of pattern B"
        expect "weston 14: zero copies after the change" '^ok weston 14: stats after pattern B: zero-copy dmabuf buffers [1-9][0-9]*, copy-path buffers 0, bytes copied 0$' "$checks"
        expect "weston 14: no copy in the guest (agent)" '^ok weston 14: agent forwarded 2 dmabufs by resource id, copied 0, bytes copied 0$' "$checks"
    fi
    expect "udmabuf path measured" '^ok perf \(udmabuf\): stats: zero-copy' "$checks"
    expect "copy path forced by --no-udmabuf" '^ok perf \(--no-udmabuf\): copy-path buffers [1-9]' "$checks"
    if [ -s "$figures" ]; then
        echo "vm/run: figures (serve's CPU per frame in the VM, TCG):"
        sed 's/^/  figure /' "$figures"
    fi
}
