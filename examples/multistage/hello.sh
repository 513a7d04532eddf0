#!/bin/sh
cat "$GREETING_DIR/hello.txt" "$GREETING_DIR/greeting.txt"
