"""lowbit.nn"""
