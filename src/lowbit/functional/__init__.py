"""lowbit.functional"""
