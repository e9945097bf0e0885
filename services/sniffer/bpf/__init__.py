"""The XDP flow meter (xdp_flow.c, xdp_flow.h) and the step that compiles it (build.py)."""
