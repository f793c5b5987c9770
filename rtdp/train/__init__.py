"""rtdp.train"""
