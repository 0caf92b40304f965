"""lowbit.bench"""
