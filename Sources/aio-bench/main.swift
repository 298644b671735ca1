import AioKit
print("bench")
