"""rtdp.control"""
