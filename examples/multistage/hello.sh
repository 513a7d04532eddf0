#!/bin/sh
cat "$GREETING_DIR/hello.txt" "$GREETING_DIR/greeting.txt"
echo "(running as $(id -un) in $(pwd))"
