"""rtdp.envs"""
