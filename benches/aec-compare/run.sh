#!/bin/sh
# Builds and runs the AEC comparison (needs libspeexdsp-dev libwebrtc-audio-processing-dev g++).
set -eu
here=$(dirname "$0")
out=${TMPDIR:-/tmp}/aec_compare
g++ -O2 -std=c++11 -o "$out" "$here/aec_compare.cpp" $(pkg-config --cflags --libs speexdsp webrtc-audio-processing)
"$out"
