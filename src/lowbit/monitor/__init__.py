"""lowbit.monitor"""
