import Glibc

/// A parsed stream URL ([STR-1]): `tcp://HOST:PORT`, `tcp4://`, `tcp6://[::1]:PORT`,
/// `ipc:///path/to/socket`.
struct StreamURL: Sendable, Equatable {
    enum Family: Sendable, Equatable { case any, ipv4, ipv6 }
    enum Kind: Sendable, Equatable {
        /// host nil: any address (listeners only); port 0: the kernel picks (listeners only).
        case tcp(host: String?, port: Int, family: Family)
        case ipc(path: String)

        var isTCP: Bool {
            if case .tcp = self { return true }
            return false
        }
    }

    let kind: Kind

    /// The most bytes of an ipc path (sun_path less its terminating NUL).
    static let maxPathBytes = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    /// Parses `url` for a listener (`forListener`) or a dialer; anything the
    /// rules of [STR-1] do not allow throws `.addressInvalid`.
    init(_ url: String, forListener: Bool) throws(AioError) {
        let bytes = Array(url.utf8)
        var sep = -1
        if bytes.count >= 3 {
            for i in 0...(bytes.count - 3) where bytes[i] == 0x3A && bytes[i + 1] == 0x2F && bytes[i + 2] == 0x2F {
                sep = i
                break
            }
        }
        guard sep > 0 else { throw AioError.addressInvalid }
        let scheme = String(decoding: bytes[..<sep], as: UTF8.self)
        let rest = String(decoding: bytes[(sep + 3)...], as: UTF8.self)
        switch scheme {
        case "ipc":
            let bytes = rest.utf8.count
            guard bytes > 0, bytes <= Self.maxPathBytes, !rest.utf8.contains(0) else { throw AioError.addressInvalid }
            kind = .ipc(path: rest)
        case "tcp", "tcp4", "tcp6":
            let family: Family = scheme == "tcp4" ? .ipv4 : scheme == "tcp6" ? .ipv6 : .any
            let (host, port) = try Self.hostAndPort(rest, forListener: forListener)
            if let host {
                if family == .ipv4 && host.contains(":") { throw AioError.addressInvalid }
                if family == .ipv6 && Self.isIPv4Literal(host) { throw AioError.addressInvalid }
            }
            kind = .tcp(host: host, port: port, family: family)
        default:
            throw AioError.addressInvalid
        }
    }

    private static func hostAndPort(_ s: String, forListener: Bool) throws(AioError) -> (String?, Int) {
        var host: String?
        var portText: Substring?
        if s.hasPrefix("[") {
            guard let close = s.firstIndex(of: "]") else { throw AioError.addressInvalid }
            let literal = String(s[s.index(after: s.startIndex)..<close])
            guard isIPv6Literal(literal) else { throw AioError.addressInvalid }
            host = literal
            let after = s[s.index(after: close)...]
            if !after.isEmpty {
                guard after.first == ":" else { throw AioError.addressInvalid }
                portText = after.dropFirst()
            }
        } else {
            if let colon = s.firstIndex(of: ":") {
                portText = s[s.index(after: colon)...]
                let h = String(s[..<colon])
                host = h.isEmpty ? nil : h
            } else {
                host = s.isEmpty ? nil : s
            }
            if let h = host {
                // A bare IPv6 literal must be in brackets; names are LDH labels.
                guard isHostName(h) || isIPv4Literal(h) else { throw AioError.addressInvalid }
            }
        }
        var port = 0
        if let p = portText {
            // A colon is always followed by a port: digits only, 0...65535.
            guard !p.isEmpty, p.count <= 5, p.allSatisfy({ $0.isASCII && $0.isNumber }), let v = Int(p), v <= 65535
            else { throw AioError.addressInvalid }
            port = v
        }
        if !forListener {
            guard host != nil, port >= 1 else { throw AioError.addressInvalid }
        }
        return (host, port)
    }

    static func isIPv4Literal(_ s: String) -> Bool {
        var a = in_addr()
        return inet_pton(AF_INET, s, &a) == 1
    }

    static func isIPv6Literal(_ s: String) -> Bool {
        var a = in6_addr()
        return inet_pton(AF_INET6, s, &a) == 1
    }

    static func isHostName(_ s: String) -> Bool {
        guard !s.isEmpty, s.utf8.count <= 253 else { return false }
        for label in s.split(separator: ".", omittingEmptySubsequences: false) {
            guard !label.isEmpty, label.utf8.count <= 63, label.first != "-", label.last != "-" else { return false }
            for c in label.utf8 {
                let ok = (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2D
                    || c == 0x5F
                if !ok { return false }
            }
        }
        return true
    }
}

/// A socket address: IPv4, IPv6 or a Unix-domain path.
public struct SocketAddress: Sendable, Hashable, CustomStringConvertible {
    enum Storage: Sendable, Hashable {
        case ipv4(host: String, port: Int)
        case ipv6(host: String, port: Int)
        case unix(path: String)
    }

    let storage: Storage

    /// The port of an IP address (nil for Unix-domain addresses).
    public var port: Int? {
        switch storage {
        case .ipv4(_, let p), .ipv6(_, let p): return p
        case .unix: return nil
        }
    }

    /// The host as text ("127.0.0.1", "::1"), or the path of a Unix-domain address.
    public var host: String {
        switch storage {
        case .ipv4(let h, _), .ipv6(let h, _): return h
        case .unix(let p): return p
        }
    }

    /// "127.0.0.1:5555", "[::1]:5555" or "ipc:///path".
    public var description: String {
        switch storage {
        case .ipv4(let h, let p): return "\(h):\(p)"
        case .ipv6(let h, let p): return "[\(h)]:\(p)"
        case .unix(let path): return "ipc://\(path)"
        }
    }

    /// Reads a sockaddr; nil for families AioKit does not use.
    init?(_ sa: UnsafePointer<sockaddr>, length: socklen_t) {
        switch Int32(sa.pointee.sa_family) {
        case AF_INET:
            let sin = UnsafeRawPointer(sa).load(as: sockaddr_in.self)
            var addr = sin.sin_addr
            var buf = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
            inet_ntop(AF_INET, &addr, &buf, socklen_t(buf.count))
            storage = .ipv4(host: Self.text(buf), port: Int(UInt16(bigEndian: sin.sin_port)))
        case AF_INET6:
            let sin6 = UnsafeRawPointer(sa).load(as: sockaddr_in6.self)
            var addr = sin6.sin6_addr
            var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            inet_ntop(AF_INET6, &addr, &buf, socklen_t(buf.count))
            storage = .ipv6(host: Self.text(buf), port: Int(UInt16(bigEndian: sin6.sin6_port)))
        case AF_UNIX:
            let offset = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)!
            let n = max(0, Int(length) - offset)
            let raw = UnsafeRawPointer(sa) + offset
            let bytes = UnsafeRawBufferPointer(start: raw, count: n)
            storage = .unix(path: String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self))
        default:
            return nil
        }
    }

    private static func text(_ buf: [CChar]) -> String {
        String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The local or peer address of a socket.
    static func of(_ fd: Int32, peer: Bool) -> SocketAddress? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        return withUnsafeMutablePointer(to: &ss) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa -> SocketAddress? in
                let rc = peer ? getpeername(fd, sa, &len) : getsockname(fd, sa, &len)
                return rc == 0 ? SocketAddress(sa, length: len) : nil
            }
        }
    }
}

/// A resolved address ready for bind/connect.
struct ResolvedAddress: @unchecked Sendable {  // plain bytes
    var storage = sockaddr_storage()
    var length: socklen_t = 0
    var family: Int32 { Int32(storage.ss_family) }

    func withSockaddr<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        withUnsafePointer(to: storage) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }

    /// A Unix-domain address.
    static func unix(_ path: String) -> ResolvedAddress {
        var r = ResolvedAddress()
        var sun = sockaddr_un()
        sun.sun_family = sa_family_t(AF_UNIX)
        let offset = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)!
        withUnsafeMutableBytes(of: &sun) { raw in
            let bytes = Array(path.utf8)
            for (i, b) in bytes.enumerated() { raw[offset + i] = b }
            raw[offset + bytes.count] = 0
        }
        withUnsafeMutableBytes(of: &r.storage) { dst in
            withUnsafeBytes(of: sun) { src in dst.copyMemory(from: src) }
        }
        r.length = socklen_t(offset + path.utf8.count + 1)
        return r
    }

    /// A numeric host (or nil: any address) without name resolution; nil if `host` is a name.
    static func numeric(host: String?, port: Int, family: StreamURL.Family) -> ResolvedAddress? {
        var r = ResolvedAddress()
        let wantV6 = family == .ipv6 || (host.map { $0.contains(":") } ?? false)
        if !wantV6 {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = UInt16(port).bigEndian
            if let host {
                guard inet_pton(AF_INET, host, &sin.sin_addr) == 1 else { return nil }
            } else {
                sin.sin_addr.s_addr = INADDR_ANY.bigEndian
            }
            withUnsafeMutableBytes(of: &r.storage) { dst in withUnsafeBytes(of: sin) { dst.copyMemory(from: $0) } }
            r.length = socklen_t(MemoryLayout<sockaddr_in>.size)
        } else {
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = UInt16(port).bigEndian
            if let host {
                guard inet_pton(AF_INET6, host, &sin6.sin6_addr) == 1 else { return nil }
            }
            withUnsafeMutableBytes(of: &r.storage) { dst in withUnsafeBytes(of: sin6) { dst.copyMemory(from: $0) } }
            r.length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        }
        return r
    }

    /// Resolves a host name (blocking: call it off the poller and task threads).
    static func resolve(host: String, port: Int, family: StreamURL.Family, passive: Bool) throws(AioError)
        -> ResolvedAddress
    {
        var hints = addrinfo()
        hints.ai_family = family == .ipv4 ? AF_INET : family == .ipv6 ? AF_INET6 : AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0) | AI_ADDRCONFIG
        var list: UnsafeMutablePointer<addrinfo>?
        var rc = getaddrinfo(host, String(port), &hints, &list)
        if rc == EAI_BADFLAGS || (rc != 0 && hints.ai_flags & AI_ADDRCONFIG != 0) {
            hints.ai_flags &= ~AI_ADDRCONFIG
            rc = getaddrinfo(host, String(port), &hints, &list)
        }
        guard rc == 0, let first = list else { throw AioError.addressInvalid }
        defer { freeaddrinfo(list) }
        // Prefer IPv4 for "tcp://" (loopback names resolve to both).
        var pick = first
        if family == .any {
            var p: UnsafeMutablePointer<addrinfo>? = first
            while let q = p {
                if q.pointee.ai_family == AF_INET { pick = q; break }
                p = q.pointee.ai_next
            }
        }
        var r = ResolvedAddress()
        let n = Int(pick.pointee.ai_addrlen)
        withUnsafeMutableBytes(of: &r.storage) { dst in
            dst.copyMemory(from: UnsafeRawBufferPointer(start: pick.pointee.ai_addr, count: n))
        }
        r.length = pick.pointee.ai_addrlen
        return r
    }
}
