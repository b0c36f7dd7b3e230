import NIOCore
import P2PProtocol

/// The life of one directory connection, without I/O: each event (bytes received, the client's
/// end of input, the server quiescing, an error or the deadline, the reply ready, the channel
/// gone) moves it on and says what the channel handler must do (``Action``). The handler
/// (``DirectoryConnectionHandler``) only runs the actions.
///
/// ```
/// awaitingProxyHeader --header--> admitting --address admitted--> reading --request--> serving
///          |                           |                                |                  |
///          +--no valid header--> closed +--address over its limit--> closed  |           --reply--> closed
///                                                                       +--bad input--> draining
///                                                                                          |
///                                                                           --client closes--> closed
/// ```
///
/// (`admitting` only when the header names a client: its address then takes one of its
/// connection slots, ``ConnectionLimits``; without `--proxy-protocol` that happens at accept.)
/// The client a load balancer's PROXY header names: its address and the port it connected
/// from (the public one its NAT gave it, which a hole punch needs).
struct ProxiedClient: Equatable, Sendable {
    var ip: String
    var port: Int
}

struct DirectoryConnectionStateMachine {
    enum State {
        /// `--proxy-protocol`: the load balancer's header comes first (its bytes so far).
        case awaitingProxyHeader(ByteBuffer)
        /// The PROXY header named `client`: waiting for ``admitted(_:)`` to say whether its
        /// address may have one more connection (`rest`: the bytes after the header).
        case admitting(rest: ByteBuffer, client: ProxiedClient)
        /// Reading the request; `client` is the PROXY header's source, when there was one.
        case reading(RequestDecoder, client: ProxiedClient?, sawBytes: Bool)
        /// The request is with the store; its reply comes with ``replyReady()``.
        case serving
        /// A reply was sent after bad input: waiting for the client to close.
        case draining
        case closed
        /// Only while an event is being handled (keeps the decoder's buffer uniquely owned).
        case modifying
    }

    /// Why a request was rejected, which decides how loudly it is logged.
    enum Rejection: Equatable {
        /// Connected and closed without a byte: a port probe, not a request.
        case emptyConnection
        /// Reset before a byte of a request (after a PROXY header, say): a load balancer's
        /// health check, which HAProxy ends with a reset.
        case endedBeforeRequest
        /// Bad input: logged as a warning.
        case badRequest
        /// The request was not whole before the deadline.
        case timedOut
    }

    enum Action {
        /// Nothing to do yet.
        case wait
        /// The PROXY header named the client: check its address's connection limit and report
        /// with ``admitted(_:)``.
        case admit(clientIP: String)
        /// The whole request is here: serve it (the deadline no longer applies). `client`
        /// stands for the connection's address and port when the PROXY header gave them.
        case serve(Request, client: ProxiedClient?)
        /// Bad input: log it, write `replyCode` when the operation is known (its "other" code),
        /// send FIN and drain; close at once as well when `closeNow` (the deadline passed).
        case reject(any Error, Rejection, replyCode: ResultCode?, closeNow: Bool)
        /// No valid PROXY header: log it (quietly when `sawBytes` is false: the balancer's
        /// health check) and close.
        case refuse(any Error, sawBytes: Bool)
        case close
    }

    private(set) var state: State
    /// Whether every connection starts with a PROXY header (`--proxy-protocol`).
    let expectsProxyHeader: Bool

    init(expectsProxyHeader: Bool) {
        self.expectsProxyHeader = expectsProxyHeader
        state =
            expectsProxyHeader
            ? .awaitingProxyHeader(ByteBuffer()) : .reading(RequestDecoder(), client: nil, sawBytes: false)
    }

    mutating func bytesReceived(_ bytes: ByteBuffer) -> Action {
        var bytes = bytes
        switch state {
        case .awaitingProxyHeader(var header):
            state = .modifying
            header.writeBuffer(&bytes)
            do {
                guard let proxy = try ProxyHeaderDecoder().decode(&header) else {
                    state = .awaitingProxyHeader(header)
                    return .wait
                }
                // Nothing of a request yet (a health check ends here); what follows is the request.
                if let source = proxy.source {
                    state = .admitting(rest: header, client: ProxiedClient(ip: source.ip, port: source.port))
                    return .admit(clientIP: source.ip)
                }
                state = .reading(RequestDecoder(), client: nil, sawBytes: false)
                guard header.readableBytes > 0 else { return .wait }
                return bytesReceived(header)
            } catch {
                state = .closed
                return .refuse(error, sawBytes: true)
            }
        case .reading(var decoder, let client, _):
            state = .modifying
            do {
                guard let request = try decoder.decode(&bytes) else {
                    state = .reading(decoder, client: client, sawBytes: true)
                    return .wait
                }
                state = .serving
                return .serve(request, client: client)
            } catch {
                return reject(error, decoder: decoder, sawBytes: true)
            }
        case .admitting(var rest, let client):
            rest.writeBuffer(&bytes)
            state = .admitting(rest: rest, client: client)
            return .wait
        case .serving, .draining, .closed, .modifying:
            return .wait
        }
    }

    /// Whether the address the PROXY header named may have this connection: if so, what came
    /// after the header is read as the request; if not, the connection is closed.
    mutating func admitted(_ admitted: Bool) -> Action {
        guard case .admitting(let rest, let client) = state else { return .wait }
        guard admitted else {
            state = .closed
            return .close
        }
        state = .reading(RequestDecoder(), client: client, sawBytes: false)
        guard rest.readableBytes > 0 else { return .wait }
        return bytesReceived(rest)
    }

    /// The client closed its side.
    mutating func inputClosed() -> Action {
        switch state {
        case .awaitingProxyHeader(let header):
            state = .closed
            return .refuse(ProxyHeaderError.missing, sawBytes: header.readableBytes > 0)
        case .reading(let decoder, _, let sawBytes):
            return reject(decoder.finish(), decoder: decoder, sawBytes: sawBytes)
        case .admitting, .draining:
            // (`admitting`: the handler answers `.admit` at once, so nothing can arrive in
            // between; were it to, the connection would not be served.)
            state = .closed
            return .close
        case .serving, .closed, .modifying:
            return .wait
        }
    }

    /// An error on the channel, or the deadline (``DirectoryConnectionHandler/TimedOut``).
    mutating func errorCaught(_ error: any Error) -> Action {
        switch state {
        case .awaitingProxyHeader(let header):
            state = .closed
            return .refuse(error, sawBytes: header.readableBytes > 0)
        case .reading(let decoder, _, let sawBytes):
            return reject(error, decoder: decoder, sawBytes: sawBytes)
        case .admitting, .draining:
            state = .closed
            return .close
        case .serving, .closed, .modifying:
            return .wait
        }
    }

    /// The server is shutting down: a connection that has not started a request will not get to.
    mutating func quiesce() -> Action {
        switch state {
        case .awaitingProxyHeader(let header) where header.readableBytes == 0:
            state = .closed
            return .close
        case .reading(_, _, sawBytes: false):
            state = .closed
            return .close
        case .awaitingProxyHeader, .admitting, .reading, .serving, .draining, .closed, .modifying:
            return .wait
        }
    }

    /// The store answered: whether to send the reply (then close).
    mutating func replyReady() -> Bool {
        guard case .serving = state else { return false }
        state = .closed
        return true
    }

    mutating func channelInactive() {
        state = .closed
    }

    private mutating func reject(_ error: any Error, decoder: RequestDecoder, sawBytes: Bool) -> Action {
        state = .draining
        let rejection: Rejection
        if case .truncated(nil, 0)? = error as? ProtocolError {
            rejection = .emptyConnection
        } else if error is DirectoryConnectionHandler.TimedOut {
            rejection = .timedOut
        } else if !sawBytes, error is IOError {
            rejection = .endedBeforeRequest
        } else {
            rejection = .badRequest
        }
        return .reject(
            error, rejection, replyCode: decoder.operation?.otherErrorCode,
            closeNow: error is DirectoryConnectionHandler.TimedOut)
    }
}
