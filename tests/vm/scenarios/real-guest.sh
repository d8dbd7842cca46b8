# shellcheck shell=bash disable=SC2034,SC2154 # tests/vm/run reads the settings, sets the logs
# real-guest (host half, sourced by tests/vm/run): Crossway as users run it. QEMU 11.1 gives a
# real Linux guest (CROSSWAY_VM_KERNEL: bookworm's 6.12 or the newest Debian kernel) Crossway's
# device through the generic vhost-user device (packaging/qemu/crossway-qemu-args), served by
# `crossway-proxy serve` relaying to a headless compositor on this host. The guest's root is
# the host's root over 9p (read-only; a writable 9p folder for results), so the workspace's
# crossway-agent, crossway-test-client and crossway-xd-guest and the host's wayland-info and
# weston-simple-shm run in the guest as built, on the guest's own render node and its real
# virtio_gpu driver.
#
# real-guest.inner (in the guest) runs the phases one after another in one boot; for each it
# writes out/NAME.ready naming the windows to look at, and holds them until out/NAME.done.
# judge_loop (here, during the boot) waits for each window on the headless compositor, takes
# its screenshot and serve's counters (SIGUSR1), then writes NAME.done. scenario_check judges
# the pictures (udmabuf.pngcheck), the counters of serve and of each agent, and the guest's
# own checks.
scenario_qemu=11
scenario_backend=crossway
scenario_modules=(9pnet_virtio 9p virtio_gpu)
scenario_mem=1G
scenario_smp=2
scenario_timeout=600
scenario_rust_log=crossway_virtio=info,crossway_proxy=info

# The control socket's client and the PNG check (tests/vm/scenarios/udmabuf.pngcheck).
real_guest_python=/usr/bin/python3

scenario_prepare() {
    local b
    for b in crossway-agent crossway-test-client crossway-xd-guest; do
        if [ ! -x "$bin_dir/$b" ]; then
            say "building $b"
            (cd "$repo" && cargo build --quiet --bin "$b")
        fi
    done
    mkdir -p "$work/out" "$work/host"
    local p
    for p in "$bin_dir" "$here/scenarios/real-guest.inner" "$work/out"; do
        case $p in
            /*[[:space:]]* | [!/]*)
                echo "vm/run: $p: the real-guest scenario needs absolute paths without spaces" >&2
                exit 2
                ;;
        esac
    done
    # The host compositor, and what the guest's half needs to know.
    NO_COLOR=1 RUST_LOG=info "$proxy" headless --socket "$work/host/wayland-0" --size 1024x768 \
        >"$work/headless.log" 2>&1 &
    extra_pids+=($!)
    local n
    for n in $(seq 100); do
        [ -S "$work/host/wayland-0.control" ] && break
        sleep 0.1
    done
    [ -S "$work/host/wayland-0.control" ] || {
        cat "$work/headless.log"
        echo "vm/run: the headless compositor did not start" >&2
        exit 1
    }
    scenario_serve_args=(--wayland-display "$work/host/wayland-0" --vm-name rg
        --stats-file "$work/out/serve.json")
    {
        echo "bin_dir=$bin_dir"
        echo "kernel=$kver"
    } >"$work/out/env"
    scenario_qemu_args=(
        -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
        -virtfs "local,path=$work/out,mount_tag=out,security_model=none"
    )
    scenario_append="crossway.inner=$here/scenarios/real-guest.inner crossway.bin_dir=$bin_dir"
    # What the guest will see through the relay, seen directly: the denied global is there.
    WAYLAND_DISPLAY=$work/host/wayland-0 wayland-info >"$work/out/host-wayland-info.txt" 2>&1 || true
    judge_loop &
    extra_pids+=($!)
}

# One request to the headless compositor's control socket; prints the answer line.
control() {
    "$real_guest_python" - "$work/host/wayland-0.control" "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(90)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
buf = b""
while not buf.endswith(b"\n"):
    chunk = s.recv(65536)
    if not chunk:
        break
    buf += chunk
print(buf.decode().strip())
PY
}

# serve's counters now, into out/serve-NAME.json.
serve_snapshot() {
    local pid n
    pid=$(cat "$work/backend.pid" 2>/dev/null) || return 1
    rm -f "$work/out/serve.json"
    kill -USR1 "$pid" 2>/dev/null || return 1
    for n in $(seq 100); do
        [ -s "$work/out/serve.json" ] && break
        sleep 0.1
    done
    sleep 0.2 # written whole: the file appears before its last byte
    cp "$work/out/serve.json" "$work/out/serve-$1.json"
}

# utime + stime of PID in clock ticks (fields 14 and 15 of /proc/PID/stat, after the name).
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }'; }

# perf-NAME.start / .stop from the guest: serve's and QEMU's CPU ticks around a measurement.
judge_perf() { # judge_perf FILE
    local f=$1 name edge serve qemu
    name=$(basename "$f")
    edge=${name##*.}
    name=${name%.*}
    serve=$(cat "$work/backend.pid" 2>/dev/null)
    qemu=$(pgrep -P "$(cat "$work/qemu.pid" 2>/dev/null)" | head -n 1)
    echo "$(cpu_ticks "$serve") $(cpu_ticks "$qemu")" >"$work/out/$name.$edge-ticks"
    case $edge in
        start) echo go >"$work/out/$name.started" ;;
        *) echo go >"$work/out/$name.stopped" ;;
    esac
}

# copy FILE: wl-copy on the host offers out/FILE (until the scenario ends).
judge_clipboard() { # judge_clipboard copy FILE
    WAYLAND_DISPLAY=$work/host/wayland-0 timeout 300 wl-copy --foreground <"$work/out/$2" \
        >/dev/null 2>"$work/wl-copy-host.log" &
    echo $! >"$work/wl-copy.pid"
    echo "shot copy $2: {\"ok\": \"offered\"}"
}

# Runs during the boot: for each NAME.ready the guest writes (lines: APP_ID ...), waits for
# each window, screenshots it into NAME-APP_ID.png, snapshots serve's counters, writes
# NAME.done with what it found.
judge_loop() {
    local seen=" " f name key value match answer
    while :; do
        for f in "$work/out"/perf-*.start "$work/out"/perf-*.stop; do
            [ -e "$f" ] || continue
            case $seen in *" $f "*) continue ;; esac
            seen="$seen$f "
            judge_perf "$f"
        done
        for f in "$work/out"/*.ready; do
            [ -e "$f" ] || continue
            name=$(basename "$f" .ready)
            case $seen in *" $name "*) continue ;; esac
            seen="$seen$name "
            : >"$work/out/$name.judged"
            while read -r key value; do
                [ -n "$value" ] || continue
                case $key in
                    copy)
                        judge_clipboard "$key" "$value" >>"$work/out/$name.judged"
                        continue
                        ;;
                esac
                match="\"$key\": \"$value\""
                answer=$(control "{\"wait_toplevel\": {$match, \"timeout_ms\": 90000}}")
                echo "wait $value: $answer" >>"$work/out/$name.judged"
                answer=$(control "{\"toplevel_screenshot\": {$match, \"path\": \"$work/out/$name-${value//[^A-Za-z0-9.-]/_}.png\"}}")
                echo "shot $value: $answer" >>"$work/out/$name.judged"
            done <"$f"
            serve_snapshot "$name" || echo "no serve snapshot" >>"$work/out/$name.judged"
            mv "$work/out/$name.judged" "$work/out/$name.done"
        done
        sleep 0.2
    done
}

# stat FILE FIELD: a counter from a stats file (jq path), or ? when missing.
stat_of() { jq -r "$2 // \"?\"" "$1" 2>/dev/null || echo "?"; }

# pixels PHASE APP_ID W H: the window's screenshot shows pattern A exactly.
pixels() {
    local msg
    if msg=$("$real_guest_python" "$here/scenarios/udmabuf.pngcheck" "$work/out/$1-$2.png" A "$3" "$4" 2>&1); then
        ok "$1: $2 shows the client's exact pixels (${3}x$4)"
    else
        bad "$1: $2: ${msg#"$work/out/"}"
    fi
}

# This shell's children's CPU time so far in ms (user + sys, from `times`, which must run in
# this shell, not in a command substitution's fork).
children_ms() { # children_ms VAR
    times >"$work/times"
    printf -v "$1" '%s' "$(awk 'NR == 2 {
        split($0, f, /[ms ]+/)
        print int((f[1] * 60 + f[2] + f[3] * 60 + f[4]) * 1000) }' "$work/times")"
}

# The same measurement through the loopback VM on this host (serve relaying to the same
# headless compositor), for the figures' comparison; prints a figures line.
loopback_perf() { # loopback_perf NAME WIDTH HEIGHT
    local sock=$work/lb-$1.sock rt=$work/lb-$1 pid t0 t1 cpu
    mkdir -p "$rt"
    children_ms t0
    NO_COLOR=1 "$proxy" serve --socket-path "$sock" --wayland-display "$work/host/wayland-0" \
        --vm-name lb >"$work/lb-serve-$1.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    local TIMEFORMAT='%U %S'
    cpu=$({ time XDG_RUNTIME_DIR=$rt NO_COLOR=1 "$proxy" vm --serve-socket "$sock" -- \
        "$bin_dir/crossway-agent" -- "$bin_dir/crossway-test-client" --buffer shm \
        --app-id "lb-$1" --title "lb-$1" --width "$2" --height "$3" --frames 60 --sync-rtt 200 \
        >"$work/out/lb-perf-$1.log" 2>&1; } 2>&1) || true
    # serve ends when the loopback VM disconnects. Its CPU time is what it added to this
    # shell's children's (`times`) besides the guest side's (`time`).
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    children_ms t1
    local rtt fps
    rtt=$(sed -n 's/^sync-rtt samples [0-9]* //p' "$work/out/lb-perf-$1.log")
    fps=$(sed -n 's/^frames 60 seconds [0-9.]* fps //p' "$work/out/lb-perf-$1.log")
    echo "loopback $1: sync round trip ${rtt:-?}, paced fps ${fps:-?}, serve CPU $((t1 - t0 - $(awk '{ printf "%d", ($1 + $2) * 1000 }' <<<"$cpu"))) ms, guest side (vm, agent, client; user sys, s) $cpu"
}

scenario_check() {
    local out=$work/out line
    expect "QEMU 11.1's generic device carries cross-domain" 'features: .*\+context_init' "$guest_log"
    expect "guest sees blobs and the host-visible window" 'features: .*\+resource_blob \+host_visible' "$guest_log"
    if [ -s "$out/checks" ]; then
        while IFS= read -r line; do
            case $line in
                "ok "*) ok "${line#ok }" ;;
                "skip "*) say "skipped: ${line#skip }" ;;
                *) bad "${line#FAIL }" ;;
            esac
        done <"$out/checks"
    else
        bad "the guest's script wrote no checks ($out/checks)"
    fi
    # Pictures: each phase's windows.
    pixels host3d rg.host3d 64 48
    pixels shm rg.shm 64 48
    pixels virtgpu rg.virtgpu 64 48
    pixels two rg.two-a 64 48
    pixels two rg.two-b 64 48
    pixels restart rg.restart 64 48
    pixels hostile rg.steady 64 48
    expect "host-blob: its window reached the host" '^shot rg\.host-blob: \{"ok"' "$out/host-blob.done"
    if [ -e "$out/simple-shm.done" ]; then
        expect "weston-simple-shm: its window reached the host" '^shot \[rg\] simple-shm: \{"ok"' "$out/simple-shm.done"
    fi
    # Zero copy on the host-visible (HOST3D) path: serve's counters after the two HOST3D
    # phases (the first ones) and the agent's.
    local f by cp zc ab pools
    for f in host-blob host3d; do
        by=$(stat_of "$out/serve-$f.json" .total.bytes_copied)
        cp=$(stat_of "$out/serve-$f.json" .total.buffers_copy)
        zc=$(stat_of "$out/serve-$f.json" '(.total.buffers_shm_zero_copy + .total.buffers_dmabuf_zero_copy)')
        if [ "$by" = 0 ] && [ "$cp" = 0 ] && [ "$zc" != "?" ] && [ "$zc" -gt 0 ]; then
            ok "$f: serve copied 0 bytes up to here (copy-path buffers 0, zero-copy buffers $zc)"
        else
            bad "$f: serve bytes copied $by, copy-path buffers $cp, zero-copy buffers $zc"
        fi
    done
    ab=$(stat_of "$out/agent-host3d.json" .bytes_copied)
    pools=$(stat_of "$out/agent-host3d.json" .shm_pools)
    if [ "$pools" != "?" ] && [ "$pools" -gt 0 ]; then
        ok "host3d: $pools wl_shm pool(s) in HOST3D blobs; the agent copied $ab bytes of damage from the client's pool"
    else
        bad "host3d: the agent made no pool (pools $pools)"
    fi
    # The other phases moved pixels (and, without udmabuf on this host, copied guest blobs).
    local frames
    frames=$(stat_of "$out/serve.json" .total.frames)
    if [ "$frames" != "?" ] && [ "$frames" -ge 7 ]; then
        ok "serve relayed $frames frames in all"
    else
        bad "serve relayed $frames frames (at least 7 expected)"
    fi
    if [ -s "$work/wl-copy.pid" ]; then kill "$(cat "$work/wl-copy.pid")" 2>/dev/null || true; fi
    local pipe
    pipe=$(stat_of "$out/agent-clip.json" .pipe_bytes)
    if [ "$pipe" != "?" ] && [ "$pipe" -ge 1048576 ]; then
        ok "clipboard: the agent moved $pipe bytes through its pipes (1 MB host to guest)"
    elif [ -e "$out/clip-h2g.done" ]; then
        bad "clipboard: the agent's pipes moved $pipe bytes, not the 1 MB pasted"
    fi
    reject "serve logged no panic" 'panicked' "$backend_log"
    reject "QEMU refused no SHMEM_MAP" 'too small|SHMEM_MAP failed|shmem' "$backend_log"
    reject "QEMU's stderr names no vhost-user error" 'vhost|backing store' "$qemu_log"
    # Figures: serve's and QEMU's CPU over each measurement, beside the loopback VM's.
    local name st sp
    echo "vm/run: figures (60 paced frames after 200 wl_display.sync round trips; CPU over both; TCG):"
    while read -r name line; do
        read -r st <"$out/perf-$name.start-ticks" || st=
        read -r sp <"$out/perf-$name.stop-ticks" || sp=
        # shellcheck disable=SC2086 # two numbers each
        set -- $st $sp
        if [ $# -ne 4 ]; then
            bad "perf $name: serve's or QEMU's CPU ticks missing ($st / $sp)"
            continue
        fi
        echo "  real guest $name: $line, serve CPU $((($3 - $1) * 10)) ms, QEMU CPU $((($4 - $2) * 10)) ms" |
            tee -a "$out/figures.txt"
    done <"$out/figures"
    loopback_perf small 64 48 | sed 's/^/  /' | tee -a "$out/figures.txt"
    loopback_perf hd 1280 720 | sed 's/^/  /' | tee -a "$out/figures.txt"
    expect "figures from the real guest" '^small rtt ' "$out/figures"
    grep -q wp_security_context_manager_v1 "$out/host-wayland-info.txt" ||
        bad "the headless host did not offer wp_security_context_manager_v1 (the denied global the guest must not see)"
}
