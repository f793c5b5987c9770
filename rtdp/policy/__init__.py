"""rtdp.policy"""
