// Chat messages in SQLite (better-sqlite3: synchronous, one file).
import Database from "better-sqlite3";
import * as fs from "fs";
import * as path from "path";

export interface ChatMessage {
  id: number;
  room: string;
  userId: string;
  username: string;
  content: string;
  createdAt: number; // Unix ms
}

export interface RoomSummary {
  room: string;
  messages: number;
  lastMessageAt: number | null;
}

export class Store {
  private db: Database.Database;
  private insertStmt: Database.Statement;
  private historyStmt: Database.Statement;
  private historyBeforeStmt: Database.Statement;
  private roomsStmt: Database.Statement;

  constructor(file: string) {
    if (file !== ":memory:") fs.mkdirSync(path.dirname(file), { recursive: true });
    this.db = new Database(file);
    this.db.pragma("journal_mode = WAL");
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        room TEXT NOT NULL,
        user_id TEXT NOT NULL,
        username TEXT NOT NULL,
        content TEXT NOT NULL,
        created_at INTEGER NOT NULL
      );
      CREATE INDEX IF NOT EXISTS messages_room_id ON messages (room, id);
    `);
    this.insertStmt = this.db.prepare(
      "INSERT INTO messages (room, user_id, username, content, created_at) VALUES (?, ?, ?, ?, ?)",
    );
    const cols = "id, room, user_id AS userId, username, content, created_at AS createdAt";
    this.historyStmt = this.db.prepare(`SELECT ${cols} FROM messages WHERE room = ? ORDER BY id DESC LIMIT ?`);
    this.historyBeforeStmt = this.db.prepare(`SELECT ${cols} FROM messages WHERE room = ? AND id < ? ORDER BY id DESC LIMIT ?`);
    this.roomsStmt = this.db.prepare(
      "SELECT room, COUNT(*) AS messages, MAX(created_at) AS lastMessageAt FROM messages GROUP BY room ORDER BY lastMessageAt DESC",
    );
  }

  add(room: string, userId: string, username: string, content: string): ChatMessage {
    const createdAt = Date.now();
    const info = this.insertStmt.run(room, userId, username, content, createdAt);
    return { id: Number(info.lastInsertRowid), room, userId, username, content, createdAt };
  }

  /** The newest `limit` messages of a room (before id `before` if given), oldest first. */
  history(room: string, limit = 50, before?: number): ChatMessage[] {
    const rows = (before ? this.historyBeforeStmt.all(room, before, limit) : this.historyStmt.all(room, limit)) as ChatMessage[];
    return rows.reverse();
  }

  rooms(): RoomSummary[] {
    return this.roomsStmt.all() as RoomSummary[];
  }

  /** A cheap query, for the readiness probe. */
  ping(): boolean {
    return this.db.prepare("SELECT 1 AS ok").get() !== undefined;
  }

  close(): void {
    this.db.close();
  }
}
