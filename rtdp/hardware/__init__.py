"""rtdp.hardware"""
