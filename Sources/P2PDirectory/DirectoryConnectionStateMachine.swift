import NIOCore
import P2PProtocol

/// The life of one directory connection, without I/O: each event (bytes received, the client's
/// end of input, the server quiescing, an error or the deadline, the reply ready, the channel
/// gone) moves it on and says what the channel handler must do (``Action``). The handler
/// (``DirectoryConnectionHandler``) only runs the actions.
///
/// ```
/// awaitingProxyHeader --header--> reading --request--> serving --reply--> closed
///          |                         |
///          +--no valid header--> closed   +--bad input--> draining --client closes--> closed
/// ```
struct DirectoryConnectionStateMachine {
    enum State {
        /// `--proxy-protocol`: the load balancer's header comes first (its bytes so far).
        case awaitingProxyHeader(ByteBuffer)
        /// Reading the request; `clientIP` is the PROXY header's source, when there was one.
        case reading(RequestDecoder, clientIP: String?, sawBytes: Bool)
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
    }

    enum Action {
        /// Nothing to do yet.
        case wait
        /// The whole request is here: serve it (the deadline no longer applies). `clientIP`
        /// stands for the connection's address when the PROXY header gave one.
        case serve(Request, clientIP: String?)
        /// Bad input: log it, write `replyCode` when the operation is known (its "other" code),
        /// send FIN and drain; close at once as well when `closeNow` (the deadline passed).
        case reject(any Error, Rejection, replyCode: ResultCode?, closeNow: Bool)
        /// No valid PROXY header: log it (quietly when `sawBytes` is false: the balancer's
        /// health check) and close.
        case refuse(any Error, sawBytes: Bool)
        case close
    }

    private(set) var state: State

    init(expectsProxyHeader: Bool) {
        state = expectsProxyHeader ? .awaitingProxyHeader(ByteBuffer()) : .reading(RequestDecoder(), clientIP: nil, sawBytes: false)
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
                state = .reading(RequestDecoder(), clientIP: proxy.source?.ip, sawBytes: false)
                guard header.readableBytes > 0 else { return .wait }
                return bytesReceived(header)
            } catch {
                state = .closed
                return .refuse(error, sawBytes: true)
            }
        case .reading(var decoder, let clientIP, _):
            state = .modifying
            do {
                guard let request = try decoder.decode(&bytes) else {
                    state = .reading(decoder, clientIP: clientIP, sawBytes: true)
                    return .wait
                }
                state = .serving
                return .serve(request, clientIP: clientIP)
            } catch {
                return reject(error, decoder: decoder, sawBytes: true)
            }
        case .serving, .draining, .closed, .modifying:
            return .wait
        }
    }

    /// The client closed its side.
    mutating func inputClosed() -> Action {
        switch state {
        case .awaitingProxyHeader(let header):
            state = .closed
            return .refuse(ProxyHeaderError.missing, sawBytes: header.readableBytes > 0)
        case .reading(let decoder, _, let sawBytes):
            return reject(decoder.finish(), decoder: decoder, sawBytes: sawBytes)
        case .draining:
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
        case .draining:
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
        case .awaitingProxyHeader, .reading, .serving, .draining, .closed, .modifying:
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
