import Crypto
import Foundation
import NIOCore
import NIOSSL
import NIOTLS
import P2PIdentity
import P2PNetworkSupport
import P2PProtocol
import Synchronization
import X509

/// TLS 1.3 between two peers of ours (docs/PROTOCOL.md, "Extension: encrypted transfers").
///
/// Each side proves its identity key: the certificate is self-signed with it, and nothing in it
/// but the key counts. The downloader accepts only an owner that proves the key the directory
/// holds for the owner's name (``ControlConnection/key(of:)``); the owner accepts any
/// downloader and learns its key. Both run on a connection already open, whichever way it was
/// opened (direct, reversed, punched, relayed): the downloader asks with
/// ``PeerRequest/tls``, the owner answers `0·`, and the handshake follows on the same bytes,
/// so a relay in between carries only ciphertext.
public final class PeerTLS: Sendable, Hashable {
    /// The key this side proves.
    public let identity: IdentityKey
    private let clientContext: NIOSSLContext
    private let serverContext: NIOSSLContext

    public init(identity: IdentityKey) throws(PeerTLSError) {
        self.identity = identity
        do {
            let privateKey = Certificate.PrivateKey(identity.privateKey)
            let name = try DistinguishedName { CommonName("p2p-client \(identity.fingerprint)") }
            let now = Date()
            // Nobody checks the dates or the issuer (the peer's key is all that is compared);
            // they are there because a certificate must have them.
            let certificate = try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: privateKey.publicKey,
                notValidBefore: now - 3600, notValidAfter: now + 10 * 365 * 86400, issuer: name, subject: name,
                signatureAlgorithm: .ed25519, extensions: Certificate.Extensions(), issuerPrivateKey: privateKey)
            let sslCertificate = try NIOSSLCertificate(bytes: try certificate.serializeAsPEM().derBytes, format: .der)
            let sslKey = try NIOSSLPrivateKey(bytes: try privateKey.serializeAsPEM().derBytes, format: .der)

            var client = TLSConfiguration.makeClientConfiguration()
            client.certificateChain = [.certificate(sslCertificate)]
            client.privateKey = .privateKey(sslKey)
            var server = TLSConfiguration.makeServerConfiguration(
                certificateChain: [.certificate(sslCertificate)], privateKey: .privateKey(sslKey))
            Self.restrict(&client)
            Self.restrict(&server)
            clientContext = try NIOSSLContext(configuration: client)
            serverContext = try NIOSSLContext(configuration: server)
        } catch {
            throw .certificate("\(error)")
        }
    }

    /// TLS 1.3 only, Ed25519 certificates only, and the peer's certificate always asked for and
    /// handed to our own check (the default one would refuse a self-signed certificate).
    private static func restrict(_ configuration: inout TLSConfiguration) {
        configuration.minimumTLSVersion = .tlsv13
        configuration.maximumTLSVersion = .tlsv13
        configuration.certificateVerification = .noHostnameVerification
        configuration.trustRoots = .certificates([])
        configuration.signingSignatureAlgorithms = [.ed25519]
        configuration.verifySignatureAlgorithms = [.ed25519]
    }

    public static func == (lhs: PeerTLS, rhs: PeerTLS) -> Bool { lhs === rhs }
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }

    /// An Ed25519 SubjectPublicKeyInfo is this prefix and the 32 bytes of the key (RFC 8410).
    private static let ed25519SPKIPrefix: [UInt8] = [
        0x30, 0x2A, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x03, 0x21, 0x00,
    ]

    /// The raw Ed25519 key a certificate holds; nil for any other kind of key.
    static func ed25519Key(of certificate: NIOSSLCertificate) -> Data? {
        guard let spki = try? certificate.extractPublicKey().toSPKIBytes(), spki.count == 44,
            spki.prefix(12).elementsEqual(ed25519SPKIPrefix)
        else { return nil }
        return Data(spki.suffix(32))
    }

    /// The downloader's side: asks the owner at the other end of `link` for TLS and runs the
    /// handshake as the TLS client. Returns once the owner has proved `ownerKey` (base64, as
    /// the directory gave it); throws when it did not, or does not offer TLS. There is no
    /// falling back to plain: a user bound to a key is always served by a client of ours.
    func secure(_ link: PeerLink, on channel: any Channel, owner: String, ownerKey: String) async throws(DownloadError)
    {
        guard let expected = Data(base64Encoded: ownerKey), expected.count == 32 else {
            throw .unverified("the directory gave a malformed key for \(owner)")
        }
        let code: ResultCode?
        do {
            var request = ByteBuffer()
            try FileRequest(fileName: PeerRequest.tls.fileName!).encode(into: &request)
            try await link.write(request)
            code = try await link.inbound.readCode()
        } catch {
            throw .unreachable("\(owner): \(shortDescription(of: error))")
        }
        guard code == .ok else {
            throw .unverified(
                "the peer at \(owner)'s address does not offer encrypted transfers (it answered "
                    + "\(code.map { "\($0)" } ?? "nothing")), yet \(owner) is bound to a key: not downloading in clear")
        }
        if let early = link.inbound.pending, early.readableBytes > 0 {
            throw .invalidReply("bytes before the TLS handshake")
        }
        link.inbound.pending = nil
        let presented = Box(Mutex<Data?>(nil))
        let handshake = channel.eventLoop.makePromise(of: Void.self)
        let context = clientContext
        do {
            try await channel.eventLoop.submit {
                let handler = try NIOSSLClientHandler(
                    context: context, serverHostname: nil,
                    customVerificationCallback: { certificates, verdict in
                        let key = certificates.first.flatMap(Self.ed25519Key(of:))
                        presented.value.withLock { $0 = key }
                        verdict.succeed(key == expected ? .certificateVerified : .failed)
                    })
                try channel.pipeline.syncOperations.addHandlers(
                    [handler, HandshakeWaiter(handshake)], position: .first)
            }.get()
            try await handshake.futureResult.get()
        } catch {
            if let key = presented.value.withLock({ $0 }), key != expected {
                throw .unverified(
                    "the peer at \(owner)'s address is not \(owner): it proved the key "
                        + "\(IdentityKey.fingerprint(ofPublicKey: key)), the directory holds "
                        + "\(IdentityKey.fingerprint(ofPublicKey: expected)) for \(owner)")
            }
            throw .unverified("the TLS handshake with \(owner) failed: \(shortDescription(of: error))")
        }
    }

    /// The owner's side, for a downloader that asked with ``PeerRequest/tls``: answers `0·`
    /// and runs the handshake as the TLS server. Returns the key the downloader proved.
    func accept(on channel: any Channel) async throws -> Data {
        let presented = Box(Mutex<Data?>(nil))
        let handshake = channel.eventLoop.makePromise(of: Void.self)
        let context = serverContext
        try await channel.eventLoop.submit {
            var zero = channel.allocator.buffer(capacity: 2)
            ReplyEncoder().writeCode(FileReplyCode.ok, into: &zero)
            // In the same turn of the event loop as adding the handler: the downloader's
            // ClientHello, sent as soon as the 0 arrives, must not be read before it is there.
            channel.writeAndFlush(zero, promise: nil)
            let handler = NIOSSLServerHandler(
                context: context,
                customVerificationCallback: { certificates, verdict in
                    let key = certificates.first.flatMap(Self.ed25519Key(of:))
                    presented.value.withLock { $0 = key }
                    verdict.succeed(key != nil ? .certificateVerified : .failed)
                })
            try channel.pipeline.syncOperations.addHandlers(
                [AbruptClose(), handler, HandshakeWaiter(handshake)], position: .first)
        }.get()
        try await handshake.futureResult.get()
        guard let key = presented.value.withLock({ $0 }) else { throw PeerTLSError.noPeerKey }
        return key
    }
}

extension PeerTLS {
    /// Closes `channel` at once; under TLS without the close_notify a close through the TLS
    /// handler sends: an owner that stops before the last byte must look cut to its
    /// downloader (a reset), not finished.
    static func cut(_ channel: any Channel) {
        channel.eventLoop.execute {
            if let context = try? channel.pipeline.syncOperations.context(handlerType: AbruptClose.self) {
                context.close(promise: nil)
            } else {
                channel.close(promise: nil)
            }
        }
    }
}

/// Sits in front of the owner's TLS handler (nearest the socket), so that ``PeerTLS/cut(_:)``
/// can close the socket past it.
private final class AbruptClose: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
}

public enum PeerTLSError: Error, CustomStringConvertible {
    /// The certificate or the TLS context could not be made from the identity key.
    case certificate(String)
    /// The handshake ended without the peer proving an Ed25519 key.
    case noPeerKey

    public var description: String {
        switch self {
        case .certificate(let reason): return "cannot make a TLS certificate from the identity key: \(reason)"
        case .noPeerKey: return "the peer proved no Ed25519 key"
        }
    }
}

/// Completes a promise when the TLS handshake in front of it completes, fails it when the
/// handshake fails or the connection ends first; passes everything on.
private final class HandshakeWaiter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private var promise: EventLoopPromise<Void>?

    init(_ promise: EventLoopPromise<Void>) {
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted? = event as? TLSUserEvent {
            promise?.succeed()
            promise = nil
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise?.fail(error)
        promise = nil
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise?.fail(ChannelError.eof)
        promise = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        promise?.fail(ChannelError.ioOnClosedChannel)
        promise = nil
    }
}
