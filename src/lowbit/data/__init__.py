"""lowbit.data"""
