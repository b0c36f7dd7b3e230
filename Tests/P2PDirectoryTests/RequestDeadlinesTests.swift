import NIOCore
import NIOEmbedded
import Testing

@testable import P2PDirectory

/// The per-loop sweep that replaced a timer per connection, on an embedded loop whose clock
/// the test moves: a connection is told once, when its deadline has passed, and only if its
/// request did not stop the deadline first; the sweep runs only while a connection waits.
@Suite struct RequestDeadlinesTests {
    /// A connection that starts its deadline when added to a pipeline and counts the times
    /// it is told the deadline passed.
    final class Connection: ChannelInboundHandler, RequestDeadlines.Waiting {
        typealias InboundIn = ByteBuffer
        let deadlines: RequestDeadlines
        var passed = 0

        init(_ deadlines: RequestDeadlines) { self.deadlines = deadlines }

        func handlerAdded(context: ChannelHandlerContext) { deadlines.start(self, context: context) }
        func deadlinePassed(context: ChannelHandlerContext) { passed += 1 }
    }

    func connect(_ deadlines: RequestDeadlines, on loop: EmbeddedEventLoop) throws -> Connection {
        let connection = Connection(deadlines)
        let channel = EmbeddedChannel(loop: loop)
        try channel.pipeline.syncOperations.addHandler(connection)
        return connection
    }

    @Test func aDeadlinePassesOnceWithinATenthOfTheTimeoutLate() throws {
        let loop = EmbeddedEventLoop()
        let deadlines = RequestDeadlines(timeout: .seconds(5), eventLoop: loop)
        let first = try connect(deadlines, on: loop)
        loop.advanceTime(by: .seconds(2))
        let second = try connect(deadlines, on: loop)
        #expect(deadlines.count == 2)

        loop.advanceTime(by: .milliseconds(2_900))  // 4.9 s for the first
        #expect(first.passed == 0)
        loop.advanceTime(by: .milliseconds(600))  // 5.5 s: the sweep every 0.5 s has seen it
        #expect(first.passed == 1)
        #expect(second.passed == 0)
        #expect(deadlines.count == 1)

        loop.advanceTime(by: .seconds(3))
        #expect(first.passed == 1)
        #expect(second.passed == 1)
        #expect(deadlines.count == 0)
        #expect(!deadlines.isSweeping)
    }

    @Test func aStoppedDeadlineNeverPasses() throws {
        let loop = EmbeddedEventLoop()
        let deadlines = RequestDeadlines(timeout: .seconds(1), eventLoop: loop)
        let served = try connect(deadlines, on: loop)
        let silent = try connect(deadlines, on: loop)
        loop.advanceTime(by: .milliseconds(300))
        deadlines.stop(served)  // its request arrived whole
        loop.advanceTime(by: .seconds(2))
        #expect(served.passed == 0)
        #expect(silent.passed == 1)
        #expect(!deadlines.isSweeping)

        // A later connection starts the sweep again.
        let later = try connect(deadlines, on: loop)
        #expect(deadlines.isSweeping)
        loop.advanceTime(by: .milliseconds(1_100))
        #expect(later.passed == 1)
    }
}
