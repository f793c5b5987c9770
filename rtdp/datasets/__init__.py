"""rtdp.datasets"""
