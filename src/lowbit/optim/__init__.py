"""lowbit.optim"""
