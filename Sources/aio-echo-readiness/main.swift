// Placeholder: filled in by the facades / concurrency work.
import AioKit
