# Sourced by the scripts: one shared cargo target directory outside the repo, so the several-minute
# SP1 build is reused across clones, CI runs and sessions.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/proofjobs/target}
export PATH="$CARGO_TARGET_DIR/release:$PATH"
