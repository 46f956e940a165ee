# Sourced by the comparison scripts: the configurations both relays run with.
# relay_configs WORKDIR NRR_PORT writes WORKDIR/ringrelay.toml and WORKDIR/nrr.toml.
relay_configs() {
  local work=$1 port=$2
  # The default cap (256 per address) rightly refuses 1,000 subscribers from one client.
  printf '[limits]\nconnections_per_ip_max = 100000\n' > "$work/ringrelay.toml"
  mkdir -p "$work/nrr-data"
  # nostr-rs-relay with its defaults, message sizes raised to ringrelay's.
  cat > "$work/nrr.toml" <<TOML
[info]
name = "nostr-rs-relay"
[database]
data_directory = "$work/nrr-data"
[network]
address = "127.0.0.1"
port = $port
[limits]
max_event_bytes = 262144
max_ws_message_bytes = 266240
max_ws_frame_bytes = 266240
TOML
}
